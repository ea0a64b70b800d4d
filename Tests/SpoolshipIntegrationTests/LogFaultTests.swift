import Foundation
import Glibc
import Testing

/// What goes wrong around a log spool: files truncated, replaced, deleted or renamed behind
/// the agent's back, a spool directory removed and made again, a full spool disk, a broken
/// config file. Each gets a clear log line and its documented outcome, never a crash.
@Suite(.serialized) struct LogFaultTests {
    func args(_ c: Cluster, spool: URL, extra: [String] = []) -> [String] {
        c.agentArgs(spools: []) + ["--logs", "app=\(spool.path)", "--log-level", "debug"] + extra
    }

    func writeRecords(_ c: Cluster, _ file: URL, _ n: Int) throws {
        let p = try LogProducer(cluster: c, file: file, records: n, batch: 64)
        #expect(try p.finish() == n)
    }

    /// Starts a daemon agent and waits until it has looked at `stream` holding `bytes`.
    func startWatching(_ c: Cluster, spool: URL, bytes: Int, stream: String = "api.log", extra: [String] = []) throws -> Daemon {
        let agent = try c.startAgent(args(c, spool: spool, extra: ["--rotate-age", "3600"] + extra))
        let seen = Harness.waitUntil(timeout: 30) {
            agent.output.split(separator: "\n").contains { $0.contains("watching log file") && $0.contains("stream=\(stream)") && $0.contains("bytes=\(bytes)") }
        }
        if !seen { throw TestFailure("agent never looked at \(stream):\n\(agent.output)") }
        return agent
    }

    func waitForLine(_ agent: Daemon, _ text: String) -> Bool {
        Harness.waitUntil(timeout: 30) { agent.output.contains(text) }
    }

    /// Stops a daemon agent cleanly, then ships what is left with --once.
    func flush(_ c: Cluster, _ agent: Daemon, spool: URL) throws {
        agent.kill(SIGTERM)
        #expect(agent.wait(timeout: 30) == 0, "clean stop:\n\(agent.output)")
        let (status, out) = try c.runOnce(args(c, spool: spool))
        #expect(status == 0, "\(out)")
    }

    @Test func truncatedBehindTheAgentsBack_saysSo_andShipsWhatFollows() throws {
        let c = try Cluster("logfault-truncate")
        defer { c.remove() }
        try c.startCollector()
        let spool = try c.spool()
        let log = spool.appendingPathComponent("api.log")
        try writeRecords(c, log, 1000)
        let agent = try startWatching(c, spool: spool, bytes: 100_000)
        defer { agent.stop() }
        // copytruncate: someone else copied the file and cut it to zero; the producer goes on.
        #expect(truncate(log.path, 0) == 0)
        #expect(waitForLine(agent, "was truncated behind the agent's back"), "\(agent.output)")
        try writeRecords(c, log, 500)
        try flush(c, agent, spool: spool)
        let r = try LogStreamCheck.verify(in: c.committed(spool: "app"), stream: "api.log")
        #expect(r.records == 500, "what was written after the truncation arrives, once")
        #expect(agent.isRunning == false && !agent.output.contains("Fatal error"))
    }

    @Test func replacedBehindTheAgentsBack_saysSo_andShipsTheNewFile() throws {
        let c = try Cluster("logfault-replace")
        defer { c.remove() }
        try c.startCollector()
        let spool = try c.spool()
        let log = spool.appendingPathComponent("api.log")
        try writeRecords(c, log, 1000)
        let agent = try startWatching(c, spool: spool, bytes: 100_000)
        defer { agent.stop() }
        // An editor saves a new file and renames it over the name.
        let fresh = c.root.appendingPathComponent("api.log.new")
        try writeRecords(c, fresh, 300)
        #expect(rename(fresh.path, log.path) == 0)
        #expect(waitForLine(agent, "was replaced behind the agent's back"), "\(agent.output)")
        try flush(c, agent, spool: spool)
        let r = try LogStreamCheck.verify(in: c.committed(spool: "app"), stream: "api.log")
        #expect(r.records == 300)
    }

    @Test func activeFileDeleted_orRenamedOutOfTheGlob_saysSo_andLeavesTheRenamedFile() throws {
        let c = try Cluster("logfault-delete")
        defer { c.remove() }
        try c.startCollector()
        let spool = try c.spool()
        try writeRecords(c, spool.appendingPathComponent("api.log"), 100)
        try writeRecords(c, spool.appendingPathComponent("worker.log"), 100)
        let agent = try startWatching(c, spool: spool, bytes: 10_000)
        defer { agent.stop() }
        #expect(Harness.waitUntil(timeout: 30) { agent.output.contains("stream=worker.log") })
        #expect(unlink(spool.appendingPathComponent("api.log").path) == 0)
        #expect(rename(spool.appendingPathComponent("worker.log").path, spool.appendingPathComponent("worker.log.old").path) == 0)
        #expect(Harness.waitUntil(timeout: 30) {
            agent.output.split(separator: "\n").filter { $0.contains("was deleted or moved away before it was rotated") }.count == 2
        }, "\(agent.output)")
        try flush(c, agent, spool: spool)
        #expect(Harness.files(in: spool) == ["worker.log.old"], "a file that left the glob is not touched")
        #expect(Harness.files(in: c.committed(spool: "app")).isEmpty)
    }

    @Test func rotatedFileDeletedBeforeItWasSealed_isReportedLost_andTheStreamGoesOn() throws {
        let c = try Cluster("logfault-rotated-deleted")
        defer { c.remove() }
        try c.startCollector()
        let spool = try c.spool()
        let log = spool.appendingPathComponent("api.log")
        // A writer that keeps the file open: the rotated file cannot be sealed.
        let fd = open(log.path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o644)
        #expect(fd >= 0)
        _ = "0000000000000000 keep me open\n".withCString { write(fd, $0, 30) }
        let agent = try c.startAgent(args(c, spool: spool, extra: ["--rotate-age", "0.5"]))
        defer { agent.stop() }
        let rotated = spool.appendingPathComponent(".spoolship/api.log.0000000001")
        #expect(Harness.waitUntil(timeout: 30) { FileManager.default.fileExists(atPath: rotated.path) })
        #expect(unlink(rotated.path) == 0)
        close(fd)
        #expect(waitForLine(agent, "rotated log file lost before it was shipped"), "\(agent.output)")
        // The stream goes on: the next file ships as segment 2.
        try writeRecords(c, log, 50)
        #expect(Harness.waitUntil(timeout: 30) { Harness.files(in: c.committed(spool: "app")) == ["api.log.0000000002"] }, "\(agent.output)")
        #expect(agent.isRunning)
    }

    @Test func spoolDirectoryRemovedAndMadeAgain_isWatchedAgain() throws {
        let c = try Cluster("logfault-dir")
        defer { c.remove() }
        try c.startCollector()
        let spool = try c.spool()
        let agent = try c.startAgent(args(c, spool: spool, extra: ["--rotate-age", "0.3"]))
        defer { agent.stop() }
        try writeRecords(c, spool.appendingPathComponent("api.log"), 100)
        let dest = c.committed(spool: "app")
        #expect(Harness.waitUntil(timeout: 30) { Harness.files(in: dest) == ["api.log.0000000001"] }, "\(agent.output)")
        try FileManager.default.removeItem(at: spool)
        #expect(waitForLine(agent, "spool directory is gone"), "\(agent.output)")
        try FileManager.default.createDirectory(at: spool, withIntermediateDirectories: false)
        #expect(waitForLine(agent, "spool directory is back"), "\(agent.output)")
        try writeRecords(c, spool.appendingPathComponent("api.log"), 100)
        #expect(Harness.waitUntil(timeout: 30) { Harness.files(in: dest).contains("api.log.0000000002") }, "\(agent.output)")
        #expect(agent.isRunning)
    }

    @Test func fullSpoolDisk_compressionFails_theSegmentShipsUncompressed() throws {
        let c = try Cluster("logfault-full")
        defer { c.remove() }
        try c.startCollector()
        let spool = try c.spool()
        #expect(Process.run("mount", ["-t", "tmpfs", "-o", "size=1m", "spoolship-test", spool.path]) == 0, "the tests run as root and mount a small tmpfs")
        defer { _ = Process.run("umount", ["-l", spool.path]) }
        try writeRecords(c, spool.appendingPathComponent("api.log"), 6000)
        // Fill what is left of the disk.
        let filler = open(spool.appendingPathComponent("filler").path, O_WRONLY | O_CREAT | O_CLOEXEC, 0o644)
        let block = [UInt8](repeating: 7, count: 4096)
        while block.withUnsafeBytes({ write(filler, $0.baseAddress!, 4096) }) > 0 {}
        #expect(errno == ENOSPC)
        close(filler)
        let args = try c.logSpoolArgs(spool, settings: """
            compress = true
            """)
        let (status, out) = try c.runOnce(args)
        #expect(status == 0, "\(out)")
        #expect(out.contains("cannot compress a rotated log file; shipping it uncompressed"), "\(out)")
        let r = try LogStreamCheck.verify(in: c.committed(spool: "app"), stream: "api.log")
        #expect(r.records == 6000)
        #expect(r.segments == ["api.log.0000000001"])
    }

    @Test func reopenCommandThatHangs_isKilledAtItsTimeout_andTheRotatedFileStillShips() throws {
        let c = try Cluster("logfault-command-hangs")
        defer { c.remove() }
        try c.startCollector()
        let spool = try c.spool()
        let args = try c.logSpoolArgs(spool, settings: """
            reopen = "command"
            command = "sleep 100"
            reopen-timeout = 1
            """)
        try writeRecords(c, spool.appendingPathComponent("api.log"), 100)
        let (status, out) = try c.runOnce(args)
        #expect(status == 0, "\(out)")
        #expect(out.contains("reopen command failed") && out.contains("still running after 1.0 s; killed"), "\(out)")
        #expect(try LogStreamCheck.verify(in: c.committed(spool: "app"), stream: "api.log").records == 100)
    }

    @Test func logFileWithAnUnshippableName_isLeftAlone_andTheOthersShip() throws {
        let c = try Cluster("logfault-badname")
        defer { c.remove() }
        try c.startCollector()
        let spool = try c.spool()
        try writeRecords(c, spool.appendingPathComponent("good.log"), 10)
        try writeRecords(c, spool.appendingPathComponent("bad\u{1}.log"), 10)
        try writeRecords(c, spool.appendingPathComponent(String(repeating: "n", count: 250) + ".log"), 10)
        let (status, out) = try c.runOnce(args(c, spool: spool))
        #expect(status == 0, "\(out)")
        #expect(out.components(separatedBy: "log file name cannot be shipped; leaving the file alone").count == 3, "\(out)")
        #expect(Harness.files(in: c.committed(spool: "app")) == ["good.log.0000000001"])
        #expect(Harness.files(in: spool).count == 2, "the two files stay where they are")
    }

    @Test func brokenConfigFiles_areRefusedBeforeStart_namingFileAndKey() throws {
        let c = try Cluster("logfault-config")
        defer { c.remove() }
        let spool = try c.spool()
        let cases: [(String, String)] = [
            ("[[logs]]\nname = \"app\"\ndir = \"\(spool.path)\"\nrotate-sise = 10\n", "unknown key 'rotate-sise' in [[logs]] #1"),
            ("[[logs]]\nname = \"app\"\ndir = \"\(spool.path)\"\nrotate-size = \"ten\"\n", "key 'rotate-size' in [[logs]] #1: expected a positive size"),
            ("[[logs]]\nname = \"app\"\ndir = \"\(spool.path)\"\nreopen = \"signal\"\n", "key 'pid-file' in [[logs]] #1: expected a pid file"),
            ("[[logs]]\nname = \"app\"\ndir = \"\(spool.path)\"\nreopen = \"never\"\ncompress = true\n", "key 'compress' in [[logs]] #1: expected false with reopen = \"never\""),
            ("[[logs]]\nname = \"app\"\ndir = \"\(spool.path)\"\nreopen = \"sometimes\"\n", "key 'reopen' in [[logs]] #1: expected \"path\", \"signal\", \"command\" or \"never\", got 'sometimes'"),
            ("[[logs]]\nname = \"app\"\ndir = \"\(spool.path)\"\ncompress = yes\n", "line 4"),
            ("[[logs]]\nname = \"app\"\ndir = \"\(c.root.path)/missing\"\n", "cannot open its directory \(c.root.path)/missing"),
        ]
        for (i, (text, expected)) in cases.enumerated() {
            let f = try c.writeConfig(text, name: "bad-\(i).toml")
            let (status, out) = try c.runOnce(c.agentArgs(spools: []) + ["--config", f.path], timeout: 30)
            #expect(status != 0 && status != nil)
            #expect(out.contains(expected), "case \(i): expected '\(expected)' in:\n\(out)")
            if i < 6 { #expect(out.contains(f.path), "the message names the file") }
        }
    }
}

extension LogFaultTests {
    /// etc/agent.toml, the documented example, is a valid config (its directories swapped for
    /// temporary ones): an agent starts from it and, with nothing to ship, exits 0.
    @Test func theExampleConfig_isValid() throws {
        let c = try Cluster("logfault-example")
        defer { c.remove() }
        let example = URL(fileURLWithPath: "\(#filePath)").deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("etc/agent.toml")
        var text = try String(contentsOf: example, encoding: .utf8)
        for dir in ["/var/spool/spoolship/inbox", "/var/log/app", "/var/log/nginx", "/var/log/legacy", "/var/lib/spoolship/agent"] {
            let local = c.root.path + dir
            try FileManager.default.createDirectory(atPath: local, withIntermediateDirectories: true)
            #expect(text.contains("\"\(dir)\""), "the example names \(dir)")
            text = text.replacingOccurrences(of: "\"\(dir)\"", with: "\"\(local)\"")
        }
        let f = try c.writeConfig(text)
        let (status, out) = try c.runOnce(["--config", f.path, "--timeout", "5"], timeout: 30)
        #expect(status == 0, "\(out)")
    }
}

extension Process {
    /// Runs a program found on PATH and returns its exit status.
    static func run(_ program: String, _ args: [String]) -> Int32 {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = [program] + args
        do { try p.run() } catch { return -1 }
        p.waitUntilExit()
        return p.terminationStatus
    }
}
