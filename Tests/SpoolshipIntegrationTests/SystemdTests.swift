import Foundation
import Glibc
import Testing

/// The daemons as systemd services: readiness, status and watchdog through NOTIFY_SOCKET (this
/// test plays the manager's part), socket activation, and the stop.
@Suite(.serialized) struct SystemdTests {
    @Test func collector_readyOnlyOnceItServes_thenStatusAndWatchdog_thenStopping() throws {
        let c = try Cluster("systemd-collector")
        defer { c.remove() }
        let notify = try NotifySocket(dir: c.root)
        defer { notify.close() }
        let portFile = c.root.appendingPathComponent("collector.port")
        let env = notify.environment.merging(["WATCHDOG_USEC": "1000000"]) { $1 }
        let d = try Daemon("spoolship-collector", ["--config", c.emptyConfig.path, "--control-socket", "none", "--listen", "127.0.0.1:0", "--data-dir", c.dataDir.path, "--port-file", portFile.path],
                           log: c.nextLog("collector"), env: env)
        defer { d.stop() }
        #expect(notify.wait(for: "READY=1", timeout: 30) != nil, "\(d.output)")
        // At READY the collector serves: its port is known and it accepts a connection.
        let port = Harness.readPortFile(portFile, timeout: 0)
        #expect(port != nil, "the port file exists when READY=1 is sent")
        if let port = port {
            let s = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            var a = sockaddr_in(sin_family: sa_family_t(AF_INET), sin_port: port.bigEndian, sin_addr: in_addr(s_addr: inet_addr("127.0.0.1")), sin_zero: (0, 0, 0, 0, 0, 0, 0, 0))
            let rc = withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(s, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
            #expect(rc == 0, "connect right after READY=1")
            close(s)
        }
        #expect(notify.lines.contains { $0.hasPrefix("STATUS=listening on 127.0.0.1:") })
        // Watchdog pings, at half the interval.
        #expect(Harness.waitUntil(timeout: 10) { notify.count("WATCHDOG=1") >= 3 }, "\(notify.lines)")
        // The status follows the work.
        let spool = try c.spool()
        var p = try c.payload()
        try p.add("one.bin", size: 5000, seed: 1, into: spool)
        let (status, out) = try c.runOnce(c.agentArgs(spools: [("spool", spool)], target: port ?? 0))
        #expect(status == 0, "\(out)")
        #expect(Harness.waitUntil(timeout: 10) { notify.lines.contains { $0.contains("1 segment(s), 5000 bytes committed") } }, "\(notify.lines)")
        d.kill(SIGTERM)
        #expect(notify.wait(for: "STOPPING=1", timeout: 30) != nil)
        #expect(d.wait(timeout: 30) == 0)
    }

    @Test func agent_readyOnlyOnceItWatchesItsSpools_thenStatus_thenStopping() throws {
        let c = try Cluster("systemd-agent")
        defer { c.remove() }
        try c.startCollector()
        let notify = try NotifySocket(dir: c.root)
        defer { notify.close() }
        let spool = try c.spool()
        let logs = try c.spool("logs")
        let env = notify.environment.merging(["WATCHDOG_USEC": "1000000"]) { $1 }
        let d = try Daemon("spoolship-agent", c.agentArgs(spools: [("spool", spool)]) + ["--logs", "app=\(logs.path)", "--rotate-age", "0.5"],
                           log: c.nextLog("agent"), env: env)
        defer { d.stop() }
        #expect(notify.wait(for: "READY=1", timeout: 30) != nil, "\(d.output)")
        // At READY the spools are watched: a file renamed in now ships without a rescan.
        var p = try c.payload()
        try p.add("after-ready.bin", size: 1000, seed: 2, into: spool)
        #expect(Harness.waitUntil(timeout: 30) { (try? p.identical(in: c.committed()).count) == 1 }, "\(d.output)")
        #expect(Harness.waitUntil(timeout: 10) { notify.lines.contains { $0.hasPrefix("STATUS=connected to 127.0.0.1:") && $0.contains("shipped 1 segment(s), 1000 bytes") } }, "\(notify.lines)")
        #expect(Harness.waitUntil(timeout: 10) { notify.count("WATCHDOG=1") >= 3 })
        d.kill(SIGTERM)
        #expect(notify.wait(for: "STOPPING=1", timeout: 30) != nil)
        #expect(d.wait(timeout: 30) == 0)
    }

    /// SIGHUP on the agent: a spool added to the config file ships without a restart (same
    /// process); a broken file is refused, and the running configuration goes on.
    @Test func agentReload_addsASpool_andABrokenConfigKeepsItRunning() throws {
        let c = try Cluster("systemd-reload")
        defer { c.remove() }
        try c.startCollector()
        let notify = try NotifySocket(dir: c.root)
        defer { notify.close() }
        let first = try c.spool("first")
        let second = try c.spool("second")
        let logs = try c.spool("logs")
        let base = """
            collector = "127.0.0.1:\(c.port)"
            agent-id = "agent-1"
            state-dir = "\(c.root.appendingPathComponent("state").path)"
            [[spool]]
            name = "first"
            dir = "\(first.path)"

            """
        let config = try c.writeConfig(base)
        let d = try Daemon("spoolship-agent", ["--config", config.path, "--control-socket", "none"], log: c.nextLog("agent"), env: notify.environment)
        defer { d.stop() }
        #expect(notify.wait(for: "READY=1", timeout: 30) != nil, "\(d.output)")
        var p = try c.payload()
        try p.add("a.bin", size: 1000, seed: 1, into: first)
        #expect(Harness.waitUntil(timeout: 30) { FileManager.default.fileExists(atPath: c.committed(spool: "first").appendingPathComponent("a.bin").path) })
        // Add a blob spool and a log spool, and reload.
        _ = try c.writeConfig(base + """
            [[spool]]
            name = "second"
            dir = "\(second.path)"
            [[logs]]
            name = "app"
            dir = "\(logs.path)"
            rotate-age = 0.3
            """)
        d.kill(SIGHUP)
        #expect(Harness.waitUntil(timeout: 30) { notify.count("READY=1") >= 2 }, "READY=1 again after the reload:\n\(d.output)")
        #expect(notify.lines.contains("RELOADING=1"))
        try p.add("b.bin", size: 2000, seed: 2, into: second)
        try Data("0000000000000000 one line\n".utf8).write(to: logs.appendingPathComponent("api.log"))
        #expect(Harness.waitUntil(timeout: 30) {
            FileManager.default.fileExists(atPath: c.committed(spool: "second").appendingPathComponent("b.bin").path)
                && FileManager.default.fileExists(atPath: c.committed(spool: "app").appendingPathComponent("api.log.0000000001").path)
        }, "\(d.output)")
        #expect(d.output.contains("configuration reloaded"))
        // A broken file: refused, said why, and the agent goes on with what it had.
        _ = try c.writeConfig(base + "[[spool]]\nname = \"third\"\ndir = \"\(c.root.path)/missing\"\n")
        d.kill(SIGHUP)
        #expect(Harness.waitUntil(timeout: 30) { d.output.contains("reload failed; keeping the running configuration") }, "\(d.output)")
        #expect(d.output.contains("cannot open its directory \(c.root.path)/missing"))
        #expect(Harness.waitUntil(timeout: 10) { notify.count("READY=1") >= 3 })
        try p.add("c.bin", size: 3000, seed: 3, into: second)
        #expect(Harness.waitUntil(timeout: 30) { FileManager.default.fileExists(atPath: c.committed(spool: "second").appendingPathComponent("c.bin").path) }, "\(d.output)")
        #expect(try p.identical(in: c.committed(spool: "first")).contains("a.bin"))
        #expect(d.isRunning)
        d.kill(SIGTERM)
        #expect(d.wait(timeout: 30) == 0)
    }

    @Test func collectorReload_aBrokenConfigKeepsItServing() throws {
        let c = try Cluster("systemd-collector-reload")
        defer { c.remove() }
        let config = try c.writeConfig("data-dir = \"\(c.dataDir.path)\"\nlog-level = \"info\"\n", name: "collector.toml")
        try c.startCollector(extra: ["--config", config.path])
        guard let d = c.collector else { throw TestFailure("no collector") }
        _ = try c.writeConfig("data-dir = \"\(c.dataDir.path)\"\nlog-level = \"loud\"\n", name: "collector.toml")
        d.kill(SIGHUP)
        #expect(Harness.waitUntil(timeout: 30) { d.output.contains("reload failed; keeping the running configuration") }, "\(d.output)")
        #expect(d.output.contains("log-level"))
        let spool = try c.spool()
        var p = try c.payload()
        try p.add("x.bin", size: 4000, seed: 4, into: spool)
        let (status, out) = try c.runOnce(c.agentArgs(spools: [("spool", spool)]))
        #expect(status == 0, "\(out)")
        #expect(try p.identical(in: c.committed()).count == 1)
        // A good file is taken: the new log level shows in the next commits.
        #expect(!d.output.contains("commit batch"))
        _ = try c.writeConfig("data-dir = \"\(c.dataDir.path)\"\nlog-level = \"debug\"\n", name: "collector.toml")
        d.kill(SIGHUP)
        #expect(Harness.waitUntil(timeout: 30) { d.output.contains("configuration reloaded") }, "\(d.output)")
        try p.add("y.bin", size: 4000, seed: 5, into: spool)
        let (status2, out2) = try c.runOnce(c.agentArgs(spools: [("spool", spool)]))
        #expect(status2 == 0, "\(out2)")
        #expect(d.output.contains("commit batch"), "debug lines after the reload:\n\(d.output)")
        #expect(d.isRunning)
    }

    /// SIGTERM in the middle of a large transfer: the agent stops at once (exit 0) without
    /// sending the rest, and the next start resumes from what the collector holds. Bytes
    /// through a counting proxy show that little was sent twice.
    @Test func sigtermMidTransfer_exitsCleanly_andTheRestartResumes() throws {
        let c = try Cluster("systemd-sigterm")
        defer { c.remove() }
        try c.startCollector()
        let proxy = try c.startProxy()
        let spool = try c.spool()
        var p = try c.payload()
        let size = 256 << 20
        try p.add("big.bin", size: size, seed: 7, into: spool)
        let args = c.agentArgs(spools: [("spool", spool)], target: proxy.port)
        let first = try c.startAgent(args)
        defer { first.stop() }
        // Well into the transfer: the collector's partial holds a good part of it.
        let partialDir = c.dataDir.appendingPathComponent(".spoolship/partial/agent-1")
        func partialBytes() -> Int {
            Harness.files(in: partialDir).reduce(0) { $0 + ((try? FileManager.default.attributesOfItem(atPath: partialDir.appendingPathComponent($1).path)[.size] as? Int) ?? 0) }
        }
        #expect(Harness.waitUntil(timeout: 60) { partialBytes() >= 64 << 20 }, "\(first.output)")
        let stopAsked = Harness.monotonicNow()
        first.kill(SIGTERM)
        #expect(first.wait(timeout: 30) == 0, "\(first.output)")
        let stopTook = Harness.monotonicNow() - stopAsked
        let held = partialBytes()
        #expect(held < size, "stopped before the end (the collector holds \(held) of \(size) bytes)")
        #expect(Harness.files(in: spool) == ["big.bin"])
        let second = try c.startAgent(args)
        defer { second.stop() }
        #expect(Harness.waitUntil(timeout: 120) { (try? p.identical(in: c.committed()).count) == 1 }, "\(second.output)")
        #expect(second.output.contains("resuming segment"), "\(second.output)")
        #expect(Harness.waitUntil(timeout: 30) { Harness.files(in: spool).isEmpty })
        let ratio = Double(proxy.bytesFromClient) / Double(size)
        print("SIGTERM mid-transfer: stopped in \(String(format: "%.2f", stopTook)) s with \(held) bytes at the collector; bytes on the wire / payload = \(String(format: "%.4f", ratio))")
        #expect(ratio < 1.05, "resumed, not sent again from 0")
        second.kill(SIGTERM)
        #expect(second.wait(timeout: 30) == 0)
    }

    @Test func collectorConfigErrors_areRefusedBeforeStart_namingFileAndKey() throws {
        let c = try Cluster("systemd-collector-config")
        defer { c.remove() }
        let cases: [(String, String)] = [
            ("data-dir = \"\(c.dataDir.path)\"\nlisten-on = \"0.0.0.0:1\"\n", "unknown key 'listen-on'"),
            ("data-dir = \"\(c.dataDir.path)\"\nidle-timeout = -5\n", "key 'idle-timeout': expected a positive number of seconds"),
            ("data-dir = \"\(c.dataDir.path)\"\nlisten = \"nowhere\"\n", "key 'listen': expected HOST:PORT"),
            ("data-dir = \"\(c.dataDir.path)\n", "line 1"),
        ]
        for (i, (text, expected)) in cases.enumerated() {
            let f = try c.writeConfig(text, name: "collector-\(i).toml")
            let d = try Daemon("spoolship-collector", ["--config", f.path, "--control-socket", "none", "--listen", "127.0.0.1:0"], log: c.nextLog("collector"))
            let status = d.wait(timeout: 30)
            #expect(status != nil && status != 0)
            #expect(d.output.contains(expected) && d.output.contains(f.path), "case \(i): expected '\(expected)' in:\n\(d.output)")
        }
        #expect(!FileManager.default.fileExists(atPath: c.dataDir.path), "nothing started")
    }

    /// etc/collector.toml, the documented example, is a valid config: a collector starts from it
    /// (its data dir and address swapped for test ones).
    @Test func theExampleCollectorConfig_isValid() throws {
        let c = try Cluster("systemd-example-collector")
        defer { c.remove() }
        let example = PackagingTests.repo.appendingPathComponent("etc/collector.toml")
        var text = try String(contentsOf: example, encoding: .utf8)
        #expect(text.contains("\"/srv/spoolship\"") && text.contains("\"0.0.0.0:7070\""))
        text = text.replacingOccurrences(of: "\"/srv/spoolship\"", with: "\"\(c.dataDir.path)\"")
            .replacingOccurrences(of: "\"0.0.0.0:7070\"", with: "\"127.0.0.1:0\"")
        let f = try c.writeConfig(text, name: "collector.toml")
        let portFile = c.root.appendingPathComponent("port")
        let d = try Daemon("spoolship-collector", ["--config", f.path, "--control-socket", "none", "--port-file", portFile.path], log: c.nextLog("collector"))
        defer { d.stop() }
        #expect(Harness.readPortFile(portFile, timeout: 30) != nil, "\(d.output)")
        d.kill(SIGTERM)
        #expect(d.wait(timeout: 30) == 0, "\(d.output)")
    }

    /// Under journald the daemons log to the journal with structured fields. The collector
    /// runs in a private mount namespace where the test's own datagram socket is mounted
    /// over /run/systemd/journal, with JOURNAL_STREAM naming its standard error.
    @Test func underJournald_logsGoToTheJournal_withStructuredFields() throws {
        let c = try Cluster("systemd-journal")
        defer { c.remove() }
        let jdir = c.root.appendingPathComponent("journal")
        try FileManager.default.createDirectory(at: jdir, withIntermediateDirectories: true)
        let journal = try NotifySocket(path: jdir.appendingPathComponent("socket").path)
        defer { journal.close() }
        let log = c.nextLog("collector")
        _ = FileManager.default.createFile(atPath: log.path, contents: nil)
        var st = stat()
        #expect(stat(log.path, &st) == 0)
        let portFile = c.root.appendingPathComponent("collector.port")
        let collector = Harness.binDir.appendingPathComponent("spoolship-collector").path
        let script = "mkdir -p /run/systemd/journal && mount --bind '\(jdir.path)' /run/systemd/journal && exec '\(collector)' --config '\(c.emptyConfig.path)' --listen 127.0.0.1:0 --data-dir '\(c.dataDir.path)' --port-file '\(portFile.path)'"
        let d = try Daemon("/usr/bin/unshare", ["--mount", "/bin/sh", "-c", script], log: log, env: ["JOURNAL_STREAM": "\(st.st_dev):\(st.st_ino)"])
        defer { d.stop() }
        guard let port = Harness.readPortFile(portFile, timeout: 30) else { throw TestFailure("collector did not start: \(d.output)") }
        let spool = try c.spool()
        var p = try c.payload()
        try p.add("one.bin", size: 100, seed: 1, into: spool)
        let (status, out) = try c.runOnce(c.agentArgs(spools: [("spool", spool)], target: port))
        #expect(status == 0, "\(out)")
        #expect(Harness.waitUntil(timeout: 10) { journal.all.contains { $0.text.contains("MESSAGE=agent connected\n") } }, "\(journal.lines)")
        let entry = journal.all.first { $0.text.contains("MESSAGE=agent connected\n") }?.text.split(separator: "\n").map(String.init) ?? []
        #expect(entry.contains("AGENT_ID=agent-1"), "\(entry)")
        #expect(entry.contains { $0.hasPrefix("PEER=127.0.0.1:") }, "\(entry)")
        #expect(entry.contains("PRIORITY=6"))
        #expect(entry.contains("SYSLOG_IDENTIFIER=spoolship-collector"))
        #expect(journal.lines.contains("MESSAGE=listening"))
        #expect(!d.output.contains("agent connected"), "nothing went to standard error:\n\(d.output)")
    }

    @Test func collector_startedBySocketActivation_servesARealAgent() throws {
        let c = try Cluster("systemd-socket")
        defer { c.remove() }
        let port = Harness.freePort()
        // Started through a shell that does not wait for it, so that it is not a child of the
        // test process: with it as a direct child, Foundation's Process never noticed the exit
        // of the agent started next (it stayed a zombie, unreaped).
        let pidFile = c.root.appendingPathComponent("activator.pid")
        let collector = Harness.binDir.appendingPathComponent("spoolship-collector").path
        let activator = try Daemon("/bin/sh", ["-c", "systemd-socket-activate -l 127.0.0.1:\(port) '\(collector)' --config '\(c.emptyConfig.path)' --data-dir '\(c.dataDir.path)' & echo $! > '\(pidFile.path)'"],
                                   log: c.nextLog("activator"))
        #expect(activator.wait(timeout: 10) == 0)
        defer {
            if let text = try? String(contentsOf: pidFile, encoding: .utf8), let pid = Int32(text.trimmingCharacters(in: .whitespacesAndNewlines)) {
                kill(pid, SIGKILL)
            }
        }
        #expect(Harness.waitUntil(timeout: 10) { activator.output.contains("Listening on") }, "\(activator.output)")
        let spool = try c.spool()
        var p = try c.payload()
        for i in 0..<5 { try p.add("f\(i)", size: 10_000 * (i + 1), seed: UInt64(i), into: spool) }
        let (status, out) = try c.runOnce(c.agentArgs(spools: [("spool", spool)], target: port) + ["--timeout", "20"], timeout: 60)
        #expect(status == 0, "\(out)\n\(activator.output)")
        #expect(try p.identical(in: c.committed()).count == 5)
        #expect(activator.output.contains("socket from systemd"), "the collector took the passed socket:\n\(activator.output)")
    }
}
