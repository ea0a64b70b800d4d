import Foundation
import Glibc
import SpoolshipIO
import Testing

/// Where openat2(2) is refused (systemd's RestrictSUIDSGID= seccomp filter, kernels before 5.6,
/// container runtimes), the daemons open files beneath their directories one path component
/// at a time, with the same guarantee: never outside the directory, never through a symlink.
@Suite struct OpenBeneathTests {
    static let routes: [Files.BeneathRoute] = [.openat2, .perComponent(errno: ENOSYS)]

    /// A tree with every way out: symlinks to a file and a directory outside, an absolute
    /// symlink, a dangling one, `..` and absolute names.
    @Test(arguments: routes) func bothRoutes_openInside_andRefuseEveryWayOut(_ route: Files.BeneathRoute) throws {
        let root = try Harness.tempDir("beneath")
        defer { Harness.remove(root) }
        let fm = FileManager.default
        let inside = root.appendingPathComponent("dir")
        let outside = root.appendingPathComponent("outside")
        try fm.createDirectory(at: inside.appendingPathComponent("sub"), withIntermediateDirectories: true)
        try fm.createDirectory(at: outside, withIntermediateDirectories: true)
        try Data("inside".utf8).write(to: inside.appendingPathComponent("sub/file"))
        try Data("secret".utf8).write(to: outside.appendingPathComponent("secret"))
        try fm.createSymbolicLink(atPath: inside.appendingPathComponent("link-file").path, withDestinationPath: "../outside/secret")
        try fm.createSymbolicLink(atPath: inside.appendingPathComponent("link-dir").path, withDestinationPath: "../outside")
        try fm.createSymbolicLink(atPath: inside.appendingPathComponent("absolute").path, withDestinationPath: outside.appendingPathComponent("secret").path)
        try fm.createSymbolicLink(atPath: inside.appendingPathComponent("dangling").path, withDestinationPath: "../outside/new")
        let dir = try Files.openDirectory(inside.path)

        for name in ["sub/file", "./sub//file"] {
            let fd = try Files.openBeneath(dir, name, O_RDONLY, label: name, route: route)
            #expect(String(decoding: try Files.readAll(fd), as: UTF8.self) == "inside", "\(name)")
        }
        let made = try Files.openBeneath(dir, "sub/made", O_WRONLY | O_CREAT | O_EXCL, mode: 0o600, label: "sub/made", route: route)
        try Files.writeAll(made, Array("new".utf8))
        #expect(fm.fileExists(atPath: inside.appendingPathComponent("sub/made").path))

        let refused: [(String, Int32, Set<Int32>)] = [
            ("link-file", O_RDONLY, [ELOOP]),
            ("link-dir/secret", O_RDONLY, [ELOOP, ENOTDIR]),
            ("link-dir", O_RDONLY | O_DIRECTORY, [ELOOP, ENOTDIR]),
            ("absolute", O_RDONLY, [ELOOP]),
            ("dangling", O_WRONLY | O_CREAT, [ELOOP]),
            ("../outside/secret", O_RDONLY, [EXDEV]),
            ("sub/../../outside/secret", O_RDONLY, [EXDEV]),
            (outside.appendingPathComponent("secret").path, O_RDONLY, [EXDEV]),
        ]
        for (name, flags, errnos) in refused {
            do {
                _ = try Files.openBeneath(dir, name, flags, label: name, route: route)
                Issue.record("\(name) was opened through \(route.description)")
            } catch let e as SyscallError {
                #expect(errnos.contains(e.errno), "\(name): \(e)")
                #expect(e.call == (route == .openat2 ? "openat2" : "openat"), "the error names the call: \(e)")
            }
        }
        #expect(!fm.fileExists(atPath: outside.appendingPathComponent("new").path), "nothing created through the dangling symlink")
        #expect(try String(contentsOf: outside.appendingPathComponent("secret"), encoding: .utf8) == "secret")
    }
}

/// The daemons themselves with openat2 refused: strace answers every openat2 with ENOSYS, as
/// systemd's seccomp filter does under the packaged units (RealSystemdTests has the real one).
@Suite(.serialized) struct NoOpenat2DaemonTests {
    static let noOpenat2 = ["/usr/bin/strace", "-f", "-qq", "-o", "/dev/null", "-e", "trace=openat2", "-e", "inject=openat2:error=ENOSYS"]
    static let route = "openat2 is refused here; files beneath a directory are opened one path component at a time"

    @Test func withoutOpenat2_bothDaemonsShipBlobsAndALogStream_andSayWhichRouteTheyTook() throws {
        let c = try Cluster("no-openat2")
        defer { c.remove() }
        try c.startCollector(under: Self.noOpenat2)
        let spool = try c.spool()
        let logs = try c.spool("logs")
        var p = try c.payload()
        for i in 0..<6 { try p.add("file-\(i)", size: [0, 1, 4096, 300_000, 2 << 20, 77][i], seed: UInt64(i + 1), into: spool) }
        var records = Data()
        for i in 0..<500 { records.append(Data("record \(i)\n".utf8)) }
        try records.write(to: logs.appendingPathComponent("app.log"))
        let args = c.agentArgs(spools: [("spool", spool)], extra: ["--logs", "app=\(logs.path)"])
        let (status, out) = try c.runOnce(args, timeout: 120, under: Self.noOpenat2)
        #expect(status == 0, "\(out)")
        #expect(try p.identical(in: c.committed()) == p.names, "every blob identical")
        #expect(try LogStreamCheck.contents(in: c.committed(spool: "app"), stream: "app.log").0 == records, "the log stream exactly")
        #expect(Harness.files(in: spool).isEmpty)
        #expect(out.contains(Self.route), "the agent says which route it took:\n\(out)")
        #expect(c.collector!.output.contains(Self.route), "the collector too:\n\(c.collector!.output)")
    }
    // A planted symlink on this route: BadInputTests.plantedSymlink_isNotFollowed(withoutOpenat2: true).
}
