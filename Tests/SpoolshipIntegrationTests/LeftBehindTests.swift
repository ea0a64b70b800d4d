import Foundation
import Glibc
import Testing

/// Every file in a spool that the agent will not ship is named, once, with the reason in
/// words; counted in `spoolship status`; and `--once` fails naming it. A hard link made into a
/// spool, which brings no close event, ships from a running agent.
@Suite(.serialized) struct LeftBehindTests {
    /// Makes, in `spool`, one of each thing that cannot ship; returns the words each is named with.
    static func plantEveryKind(in spool: URL) throws -> [String] {
        let fm = FileManager.default
        // A name that is not valid UTF-8: made through the bytes of its path.
        var path = Array(spool.path.utf8) + Array("/bad-".utf8) + [0xFF, 0xFE] + Array(".bin".utf8) + [0]
        let fd = path.withUnsafeMutableBufferPointer { p in p.baseAddress!.withMemoryRebound(to: CChar.self, capacity: p.count) { open($0, O_WRONLY | O_CREAT, 0o644) } }
        #expect(fd >= 0)
        close(fd)
        #expect(fm.createFile(atPath: spool.appendingPathComponent("ctl\u{01}name").path, contents: Data("x".utf8)))
        try fm.createSymbolicLink(atPath: spool.appendingPathComponent("link").path, withDestinationPath: "/etc/hostname")
        #expect(mkfifo(spool.appendingPathComponent("fifo").path, 0o644) == 0)
        try fm.createDirectory(at: spool.appendingPathComponent("subdir"), withIntermediateDirectories: false)
        let sock = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let sp = Array(spool.appendingPathComponent("sock").path.utf8)
        withUnsafeMutableBytes(of: &addr.sun_path) { p in for (i, b) in sp.enumerated() { p[i] = b } }
        #expect(withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(sock, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } } == 0)
        close(sock)
        return ["bad-\\xFF\\xFE.bin (its name is not valid UTF-8)", "ctl\\x01name", "link (it is a symbolic link", "fifo (it is a FIFO (named pipe)",
                "sock (it is a socket", "subdir (it is a directory"]
    }

    @Test func once_namesEveryFileThatWillNotShip_andFails_whileTheRestShips() throws {
        let c = try Cluster("left-behind-once")
        defer { c.remove() }
        try c.startCollector()
        let spool = try c.spool()
        var p = try c.payload()
        try p.add("good.bin", size: 10_000, seed: 1, into: spool)
        let words = try Self.plantEveryKind(in: spool)
        let (status, out) = try c.runOnce(c.agentArgs(spools: [("spool", spool)]), timeout: 120)
        #expect(status == 1, "--once fails while files stay behind:\n\(out)")
        #expect(try p.identical(in: c.committed()) == ["good.bin"], "the rest ships")
        let summary = out.split(separator: "\n").last { $0.hasPrefix("spoolship-agent: ") } ?? ""
        #expect(summary.contains("6 file(s) stay in the spools and will not ship"), "\(summary)")
        for w in words {
            #expect(summary.contains("spool/\(w)"), "the summary names \(w):\n\(summary)")
            let logged = out.split(separator: "\n").filter { $0.contains("file cannot be shipped") && $0.contains(String(w.prefix { $0 != " " })) }
            #expect(logged.count == 1, "named once in the log: \(w):\n\(out)")
        }
        #expect(!out.contains("all segments shipped"))
    }

    @Test func daemon_namesThemWithoutARestart_countsThemInStatus_andShipsAHardLink() throws {
        let c = try Cluster("left-behind-daemon")
        defer { c.remove() }
        try c.startCollector()
        let spool = try c.spool()
        let agent = try c.startAgent(c.agentArgs(spools: [("spool", spool)]))
        defer { agent.stop() }
        // Ready once a first file ships: the spool is watched.
        var p = try c.payload()
        try p.add("first.bin", size: 100, seed: 1, into: spool)
        #expect(Harness.waitUntil(timeout: 60) { Harness.files(in: c.committed()).contains("first.bin") })
        _ = try Self.plantEveryKind(in: spool)
        #expect(Harness.waitUntil(timeout: 30) { agent.output.components(separatedBy: "file cannot be shipped").count - 1 == 6 },
                "each named at once, without a restart:\n\(agent.output)")
        let json = try StatusTests.json(c.agentSocket())
        #expect(((json["spools"] as? [[String: Any]])?.first?["unshippable"] as? Int) == 6, "\(json)")
        #expect((json["left_behind"] as? [[String: Any]])?.count == 6, "\(json)")
        // A hard link into the spool (maildir style: link, then unlink the original).
        let outside = c.root.appendingPathComponent("elsewhere.bin")
        try Harness.writeRandomFile(outside, size: 5000, seed: 5)
        #expect(link(outside.path, spool.appendingPathComponent("linked.bin").path) == 0)
        #expect(Harness.waitUntil(timeout: 30) {
            (try? Harness.sameContents(outside, c.committed().appendingPathComponent("linked.bin"))) == true
        }, "a hard link ships from a running agent")
        unlink(outside.path)
        // Removed, a left-behind file is no longer counted.
        unlink(spool.appendingPathComponent("fifo").path)
        #expect(Harness.waitUntil(timeout: 30) {
            let j = (try? StatusTests.json(c.agentSocket())) ?? [:]
            return ((j["spools"] as? [[String: Any]])?.first?["unshippable"] as? Int) == 5
        }, "the removed FIFO is forgotten")
    }
}
