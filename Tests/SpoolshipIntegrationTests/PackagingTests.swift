import Foundation
import Glibc
import Testing

/// packaging/: the units pass `systemd-analyze verify`, and the .deb holds what it must.
@Suite(.serialized) struct PackagingTests {
    static let repo = URL(fileURLWithPath: "\(#filePath)").deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    /// Runs a command; returns its status and its output (stdout and stderr together).
    func run(_ exe: String, _ args: [String], cwd: URL? = nil, env: [String: String] = [:]) throws -> (Int32, String) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: exe)
        p.arguments = args
        p.environment = ProcessInfo.processInfo.environment.merging(env) { $1 }
        if let cwd = cwd { p.currentDirectoryURL = cwd }
        let pipe = Pipe()
        p.standardOutput = pipe
        p.standardError = pipe
        try p.run()
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return (p.terminationStatus, String(decoding: data, as: UTF8.self))
    }

    @Test func units_passSystemdAnalyzeVerify_inATemporaryRoot() throws {
        let root = try Harness.tempDir("units-root")
        defer { Harness.remove(root) }
        let fm = FileManager.default
        // A root with the host's own units (targets the ours refer to), /bin/sh (ExecReload),
        // and our binary and its two names where the units expect them, as the package has them.
        try fm.createDirectory(at: root.appendingPathComponent("usr/bin"), withIntermediateDirectories: true)
        try fm.createDirectory(at: root.appendingPathComponent("usr/lib/systemd"), withIntermediateDirectories: true)
        try fm.createSymbolicLink(atPath: root.appendingPathComponent("bin").path, withDestinationPath: "usr/bin")
        try fm.createSymbolicLink(atPath: root.appendingPathComponent("lib").path, withDestinationPath: "usr/lib")
        #expect(try run("/bin/cp", ["-a", "/usr/lib/systemd/system", root.appendingPathComponent("usr/lib/systemd/").path]).0 == 0)
        try fm.copyItem(atPath: URL(fileURLWithPath: "/bin/sh").resolvingSymlinksInPath().path, toPath: root.appendingPathComponent("usr/bin/sh").path)
        try fm.copyItem(at: Harness.binDir.appendingPathComponent("spoolship"), to: root.appendingPathComponent("usr/bin/spoolship"))
        for b in ["spoolship-agent", "spoolship-collector"] {
            try fm.createSymbolicLink(atPath: root.appendingPathComponent("usr/bin/\(b)").path, withDestinationPath: "spoolship")
        }
        var units: [String] = []
        for u in ["spoolship-agent.service", "spoolship-collector.service", "spoolship-collector.socket"] {
            let dest = root.appendingPathComponent("usr/lib/systemd/system/\(u)")
            try? fm.removeItem(at: dest)
            try fm.copyItem(at: Self.repo.appendingPathComponent("packaging/systemd/\(u)"), to: dest)
            units.append(dest.path)
        }
        let (status, out) = try run("/usr/bin/systemd-analyze", ["verify", "--man=no", "--root=\(root.path)"] + units)
        #expect(status == 0, "\(out)")
        #expect(out.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty, "no warnings either:\n\(out)")
        // The sysusers and tmpfiles entries parse too.
        let (s2, o2) = try run("/usr/bin/systemd-sysusers", ["--dry-run", "--root=\(root.path)", Self.repo.appendingPathComponent("packaging/sysusers.d/spoolship.conf").path])
        #expect(s2 == 0, "\(o2)")
    }

    @Test func deb_holdsTheBinariesUnitsConfigAndDocs() throws {
        let out = try Harness.tempDir("deb")
        defer { Harness.remove(out) }
        let (status, text) = try run("/bin/bash", ["packaging/build-deb.sh", "--bin-dir", Harness.binDir.path, out.path], cwd: Self.repo,
                                 env: ["DEB_COMPRESSION": "none"])
        #expect(status == 0, "\(text)")
        guard let deb = Harness.files(in: out).first(where: { $0.hasSuffix(".deb") }) else { throw TestFailure("no .deb built:\n\(text)") }
        let path = out.appendingPathComponent(deb).path
        let (s1, contents) = try run("/usr/bin/dpkg-deb", ["-c", path])
        #expect(s1 == 0)
        // One binary; the daemons are its two other names.
        #expect(contents.contains(" ./usr/bin/spoolship\n"), "\(contents)")
        for name in ["spoolship-agent", "spoolship-collector"] {
            #expect(contents.contains(" ./usr/bin/\(name) -> spoolship\n"), "\(name) is a symlink to spoolship:\n\(contents)")
        }
        #expect(contents.split(separator: "\n").first { $0.hasSuffix(" ./") }?.hasPrefix("drwxr-xr-x") == true, "the package's ./ is 0755")
        for f in ["./lib/systemd/system/spoolship-agent.service", "./lib/systemd/system/spoolship-collector.service",
                  "./lib/systemd/system/spoolship-collector.socket", "./usr/lib/sysusers.d/spoolship.conf",
                  "./usr/lib/tmpfiles.d/spoolship.conf", "./usr/lib/modules-load.d/spoolship.conf", "./etc/spoolship/agent.toml", "./etc/spoolship/collector.toml",
                  "./usr/share/doc/spoolship/README.md", "./usr/share/doc/spoolship/OPERATIONS.md"] {
            #expect(contents.contains(" \(f)\n") || contents.hasSuffix(" \(f)"), "\(f) in the package")
        }
        let (s2, control) = try run("/usr/bin/dpkg-deb", ["-f", path])
        #expect(s2 == 0)
        #expect(control.contains("Package: spoolship"))
        #expect(control.contains("libsystemd0") && control.contains("zlib1g") && control.contains("libisal2"), "Depends names the C libraries:\n\(control)")
        let (s3, conffiles) = try run("/usr/bin/dpkg-deb", ["--info", path, "conffiles"])
        #expect(s3 == 0 && conffiles.contains("/etc/spoolship/agent.toml"))
    }
}
