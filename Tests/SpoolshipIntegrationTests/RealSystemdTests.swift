import Foundation
import Glibc
import Testing

/// The package as a user installs it, under a real systemd: a Debian 12 minbase root
/// (scripts/container-root.sh, cached) booted with systemd-nspawn, systemd 252 as PID 1, the
/// freshly built .deb installed with dpkg -i, and the packaged units driven with systemctl and
/// read with journalctl. What SystemdTests checks against a stand-in of systemd is checked here
/// against the real one, with the units' hardening in force.
///
/// scripts/test.sh builds the .deb and the root and names them in SPOOLSHIP_DEB and
/// SPOOLSHIP_CONTAINER_ROOT.
@Suite(.serialized) struct RealSystemdTests {
    /// `systemd-analyze security` of each unit (3.2 and 3.0 before SystemCallFilter=, MemoryDenyWriteExecute=, RemoveIPC=, UMask= and, for the collector, ProtectProc=): it must not get worse.
    static let exposureCeiling: [String: Double] = ["spoolship-agent.service": 1.6, "spoolship-collector.service": 1.2]
    /// CAP_KILL (5) and CAP_LEASE (28): what the agent's unit grants, and all it has.
    static let agentCapabilities = "0000000010000020"
    static let agentID = "host-1"

    /// Seconds since `start`, for the timings printed at the end.
    final class Clock {
        let start = Harness.monotonicNow()
        var marks: [String] = []
        var last = Harness.monotonicNow()
        func mark(_ what: String) {
            let now = Harness.monotonicNow()
            marks.append("\(what) \(String(format: "%.1f", now - last)) s")
            last = now
        }
        var summary: String { marks.joined(separator: ", ") + String(format: "; total %.1f s", last - start) }
    }

    @Test func thePackagedUnits_underARealSystemd() throws {
        let env = ProcessInfo.processInfo.environment
        guard let deb = env["SPOOLSHIP_DEB"], !deb.isEmpty, let rootfs = env["SPOOLSHIP_CONTAINER_ROOT"], !rootfs.isEmpty else {
            Issue.record("SPOOLSHIP_DEB and SPOOLSHIP_CONTAINER_ROOT are not set: run the suite with scripts/test.sh, which builds the .deb (packaging/build-deb.sh) and the container root (scripts/container-root.sh)")
            return
        }
        let work = try Harness.tempDir("real-systemd")
        defer { Harness.remove(work) }
        let clock = Clock()
        let c = try Container(root: rootfs, binds: [(deb, "/root/spoolship.deb")], log: work.appendingPathComponent("nspawn.log"))
        defer { c.shutdown() }
        clock.mark("boot")
        // The daemons' journals, for a look after a failure.
        let journals = URL(fileURLWithPath: "/tmp/spoolship-real-systemd.journal")
        defer {
            let text = ["spoolship-collector.service", "spoolship-agent.service", "spoolship-collector.socket"].map {
                "--- journal of \($0):\n" + ((try? c.journal($0)) ?? "")
            }.joined(separator: "\n")
            try? Data(text.utf8).write(to: journals)
        }

        // Installed on a minimal Debian: the binary and its two names, the units valid there.
        let (installed, dpkgOut) = try c.run(["dpkg", "-i", "/root/spoolship.deb"])
        try #require(installed == 0, "dpkg -i: \(dpkgOut)")
        clock.mark("dpkg -i")
        #expect(!FileManager.default.fileExists(atPath: c.path("/bin/kill").path), "the root has no /bin/kill (no procps), as a minimal install")
        for name in ["spoolship-agent", "spoolship-collector"] {
            #expect((try? FileManager.default.destinationOfSymbolicLink(atPath: c.path("/usr/bin/\(name)").path)) == "spoolship")
        }
        let units = ["spoolship-agent.service", "spoolship-collector.service", "spoolship-collector.socket"]
        let (verified, verifyOut) = try c.run(["systemd-analyze", "verify", "--man=no"] + units.map { "/lib/systemd/system/\($0)" })
        #expect(verified == 0 && verifyOut.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty, "systemd-analyze verify on a minimal install: \(verifyOut)")

        // Exposure, as systemd-analyze security scores the hardening.
        for unit in ["spoolship-agent.service", "spoolship-collector.service"] {
            let (_, out) = try c.run(["systemd-analyze", "security", "--no-pager", unit])
            let line = out.split(separator: "\n").first { $0.contains("Overall exposure level") }.map(String.init) ?? ""
            print("real-systemd: \(line)")
            // "→ Overall exposure level for spoolship-agent.service: 3.2 OK :-)"
            let score = line.range(of: "\(unit): ").flatMap { Double(line[$0.upperBound...].prefix { $0.isNumber || $0 == "." }) }
            #expect(score != nil && score! <= Self.exposureCeiling[unit]!, "\(unit): \(line), at most \(Self.exposureCeiling[unit]!)")
        }

        // Configured as an operator would: credentials, a blob spool and a gzipped log spool, a
        // fault proxy of the test between the agent and the collector, a shorter watchdog.
        let collectorPort = Harness.freePort()
        let proxy = try FaultProxy(targetPort: collectorPort)
        defer { proxy.stop() }
        let secret = "a-secret-of-the-test-\(getpid())"
        try c.write("/etc/spoolship/collector.toml", """
            listen = "127.0.0.1:\(collectorPort)"
            data-dir = "/srv/spoolship"
            agents = "/etc/spoolship/agents"
            checkpoint-bytes = "1MiB"

            """)
        let agentConfig = """
            collector = "127.0.0.1:\(proxy.port)"
            agent-id = "\(Self.agentID)"
            state-dir = "/var/lib/spoolship/agent"
            secret-file = "/etc/spoolship/secret"

            [[spool]]
            name = "inbox"
            dir = "/var/spool/spoolship/inbox"

            [[logs]]
            name = "app"
            dir = "/var/log/app"
            rotate-age = 1
            compress = true

            [[logs]]
            name = "held"
            dir = "/var/log/held"
            rotate-age = 1
            reopen = "command"
            command = "kill -HUP $(cat /run/spoolship-test-producer.pid)"

            """
        try c.write("/etc/spoolship/agent.toml", agentConfig)
        try c.write("/etc/spoolship/agents", "\(Self.agentID) \(secret)\n")
        try c.write("/etc/spoolship/secret", "\(secret)\n")
        try c.write("/etc/systemd/system/spoolship-collector.service.d/test.conf", "[Service]\nWatchdogSec=15s\n")
        try c.write("/etc/systemd/system/spoolship-collector.socket.d/test.conf", "[Socket]\nListenStream=\nListenStream=127.0.0.1:\(collectorPort)\n")
        let (prepared, prepareOut) = try c.sh("""
            set -e
            chown spoolship:spoolship /etc/spoolship/agents /etc/spoolship/secret
            chmod 0600 /etc/spoolship/agents /etc/spoolship/secret
            install -d -o spoolship -g spoolship -m 0770 /var/spool/spoolship/inbox /var/spool/spoolship/extra /var/log/app /var/log/held
            systemctl daemon-reload
            """)
        try #require(prepared == 0, "\(prepareOut)")

        // Readiness: `systemctl start` of a Type=notify unit returns at READY=1, and by then the
        // collector accepts connections, and the agent watches its spools.
        let (started, startOut) = try c.run(["systemctl", "start", "spoolship-collector.service"])
        try #require(started == 0, "\(startOut)")
        #expect(Self.accepts(port: collectorPort), "the collector serves once systemctl start has returned")
        #expect(try c.property("spoolship-collector.service", "StatusText").contains("listening on 127.0.0.1:\(collectorPort)"))
        let (agentStarted, agentOut) = try c.run(["systemctl", "start", "spoolship-agent.service"])
        try #require(agentStarted == 0, "\(agentOut)")
        clock.mark("configure and start")
        #expect(try c.property("spoolship-agent.service", "ActiveState") == "active")

        // The hardening holds the daemons to what they need, and no more.
        let agentPID = try c.property("spoolship-agent.service", "MainPID")
        let collectorPID = try c.property("spoolship-collector.service", "MainPID")
        let agentProc = try c.run(["cat", "/proc/\(agentPID)/status"]).1
        for field in ["CapEff", "CapPrm", "CapBnd", "CapAmb"] {
            #expect(agentProc.contains("\(field):\t\(Self.agentCapabilities)"), "agent \(field): CAP_KILL and CAP_LEASE only:\n\(agentProc)")
        }
        #expect(agentProc.contains("NoNewPrivs:\t1"))
        let collectorProc = try c.run(["cat", "/proc/\(collectorPID)/status"]).1
        #expect(collectorProc.contains("CapEff:\t0000000000000000") && collectorProc.contains("CapBnd:\t0000000000000000"), "collector: no capability:\n\(collectorProc)")
        #expect(try c.run(["stat", "-c", "%U", "/proc/\(agentPID)"]).1.hasPrefix("spoolship"), "the agent runs as spoolship")

        // Files shipped between the packaged daemons: blobs written as root, a log stream
        // appended to by path and rotated by the agent, the spools emptied.
        let inbox = c.path("/var/spool/spoolship/inbox")
        let committed = c.path("/srv/spoolship/\(Self.agentID)/inbox")
        var payload = try Payload(originals: work.appendingPathComponent("originals"))
        for i in 0..<12 { try payload.add("blob-\(i).bin", size: [0, 1, 4096, 100_000, 1 << 20, 3 << 20][i % 6] + i, seed: UInt64(i + 1), into: inbox) }
        var expectedLog = Data()
        for batch in 0..<20 {
            var chunk = ""
            for r in 0..<100 { chunk += "record \(batch * 100 + r) of the app's stream\n" }
            try Self.append(Data(chunk.utf8), to: c.path("/var/log/app/app.log"))
            expectedLog.append(Data(chunk.utf8))
        }
        let blobsArrived = Harness.waitUntil(timeout: 90) { ((try? payload.identical(in: committed)) ?? []).count == payload.names.count }
        #expect(blobsArrived, "every blob committed, identical: \((try? payload.identical(in: committed))?.count ?? 0) of \(payload.names.count)")
        #expect(Harness.waitUntil(timeout: 30) { Harness.files(in: inbox).isEmpty }, "the spool emptied: \(Harness.files(in: inbox))")
        let appDir = c.path("/srv/spoolship/\(Self.agentID)/app")
        #expect(Harness.waitUntil(timeout: 60) { Self.gunzipConcatenated(appDir) == expectedLog }, "the log stream arrived exactly once, in order")
        #expect(Harness.files(in: appDir).allSatisfy { $0.hasPrefix("app.log.") && $0.hasSuffix(".gz") }, "\(Harness.files(in: appDir))")
        // UMask=0027: committed files and their directories are not open to others.
        let modes = try c.run(["stat", "-c", "%a %U:%G %n", "/srv/spoolship/\(Self.agentID)/inbox", "/srv/spoolship/\(Self.agentID)/inbox/blob-0.bin"]).1
        #expect(modes == "750 spoolship:spoolship /srv/spoolship/\(Self.agentID)/inbox\n640 spoolship:spoolship /srv/spoolship/\(Self.agentID)/inbox/blob-0.bin\n", "\(modes)")
        // A producer that holds its file open, running as root, told to reopen by a command
        // that the agent runs in its sandbox (the system call filter, and CAP_KILL to signal
        // another user's process): every record arrives once, in order.
        let producer = """
            echo $$ > /run/spoolship-test-producer.pid
            exec 3>>/var/log/held/held.log
            trap 'exec 3>>/var/log/held/held.log' HUP
            i=0
            while [ $i -lt 300 ]; do echo "held record $i" >&3; i=$((i+1)); [ $((i % 30)) -eq 0 ] && sleep 0.2; done
            while :; do sleep 0.1; done
            """
        // From a file: systemd 252 would expand the $ of a command line given to systemd-run.
        try c.write("/root/producer.sh", producer)
        let (producing, producingOut) = try c.run(["systemd-run", "--unit=spoolship-test-producer", "--quiet", "/bin/sh", "/root/producer.sh"])
        try #require(producing == 0, "\(producingOut)")
        let expectedHeld = Data((0..<300).map { "held record \($0)\n" }.joined().utf8)
        let heldDir = c.path("/srv/spoolship/\(Self.agentID)/held")
        #expect(Harness.waitUntil(timeout: 60) { (try? LogStreamCheck.contents(in: heldDir, stream: "held.log").0) == expectedHeld },
                "a producer that reopens on a signal from the agent's command: \(Harness.files(in: heldDir))")
        try c.run(["systemctl", "stop", "spoolship-test-producer.service"])
        clock.mark("ship")

        // The journal has the daemons' structured fields.
        let connected = try c.journalEntries("spoolship-collector.service").first { ($0["MESSAGE"] as? String) == "agent connected" }
        #expect(connected?["AGENT_ID"] as? String == Self.agentID, "\(connected ?? [:])")
        #expect((connected?["PEER"] as? String)?.hasPrefix("127.0.0.1:") == true)
        #expect(connected?["PRIORITY"] as? String == "6")
        #expect(connected?["SYSLOG_IDENTIFIER"] as? String == "spoolship-collector")
        #expect(connected?["_SYSTEMD_UNIT"] as? String == "spoolship-collector.service")
        let agentJournal = try c.journalEntries("spoolship-agent.service")
        #expect(agentJournal.contains { ($0["MESSAGE"] as? String) == "connected to collector" && ($0["AGENT_ID"] as? String) == Self.agentID })
        // openat2 is refused under RestrictSUIDSGID=: both daemons said which route they took.
        for u in ["spoolship-agent.service", "spoolship-collector.service"] {
            #expect(try c.journal(u).contains("openat2 is refused here"), "\(u) names its file-opening route")
        }

        // CAP_LEASE at work: a root-owned file that a process still writes is not taken by an
        // agent that finds it at start, until its writer closes it.
        let (writing, writingOut) = try c.run(["systemd-run", "--unit=spoolship-test-writer", "--quiet", "/bin/sh", "-c",
                                               "exec 3>/var/spool/spoolship/inbox/held.bin; printf 'first half, ' >&3; exec sleep 600"])
        try #require(writing == 0, "\(writingOut)")
        #expect(Harness.waitUntil(timeout: 10) { (try? Data(contentsOf: inbox.appendingPathComponent("held.bin")).count) == 12 })
        try #require(try c.run(["systemctl", "restart", "spoolship-agent.service"]).0 == 0)
        try payload.add("after-held.bin", size: 5000, seed: 99, into: inbox)
        #expect(Harness.waitUntil(timeout: 30) { FileManager.default.fileExists(atPath: committed.appendingPathComponent("after-held.bin").path) })
        #expect(!FileManager.default.fileExists(atPath: committed.appendingPathComponent("held.bin").path), "a file with a writer is not shipped")
        #expect(Harness.files(in: inbox).contains("held.bin"))
        try c.run(["systemctl", "stop", "spoolship-test-writer.service"])
        #expect(Harness.waitUntil(timeout: 30) { (try? Data(contentsOf: committed.appendingPathComponent("held.bin"))) == Data("first half, ".utf8) },
                "shipped once its writer closed it")
        clock.mark("lease")

        // Reload through systemctl, without /bin/kill: unchanged, changed, broken.
        func count(_ unit: String, _ message: String) -> Int {
            ((try? c.journal(unit)) ?? "").components(separatedBy: message).count - 1
        }
        func reload(_ unit: String, expect message: String) throws -> Bool {
            let before = count(unit, message)
            let (status, out) = try c.run(["systemctl", "reload", unit])
            #expect(status == 0, "systemctl reload \(unit): \(out)")
            return Harness.waitUntil(timeout: 30) { count(unit, message) > before }
        }
        let agentBefore = try c.property("spoolship-agent.service", "MainPID")
        #expect(try reload("spoolship-agent.service", expect: "configuration unchanged"))
        try c.write("/etc/spoolship/agent.toml", agentConfig + "[[spool]]\nname = \"extra\"\ndir = \"/var/spool/spoolship/extra\"\n")
        #expect(try reload("spoolship-agent.service", expect: "configuration reloaded"))
        try payload.add("extra.bin", size: 7000, seed: 7, into: c.path("/var/spool/spoolship/extra"))
        let extra = c.path("/srv/spoolship/\(Self.agentID)/extra")
        #expect(Harness.waitUntil(timeout: 30) { ((try? payload.identical(in: extra)) ?? []).contains("extra.bin") }, "a spool added by a reload ships")
        try c.write("/etc/spoolship/agent.toml", "this is not [toml\n")
        #expect(try reload("spoolship-agent.service", expect: "reload failed"))
        try payload.add("after-broken.bin", size: 3000, seed: 8, into: inbox)
        #expect(Harness.waitUntil(timeout: 30) { ((try? payload.identical(in: committed)) ?? []).contains("after-broken.bin") }, "a broken file keeps the agent running")
        #expect(try c.property("spoolship-agent.service", "MainPID") == agentBefore, "the same process throughout")
        #expect(try c.property("spoolship-agent.service", "ActiveState") == "active")
        try c.write("/etc/spoolship/agent.toml", agentConfig)
        #expect(try reload("spoolship-agent.service", expect: "configuration reloaded"))
        let collectorToml = try String(contentsOf: c.path("/etc/spoolship/collector.toml"), encoding: .utf8)
        try c.write("/etc/spoolship/collector.toml", "listen = 7\n")
        #expect(try reload("spoolship-collector.service", expect: "reload failed"))
        #expect(try c.property("spoolship-collector.service", "MainPID") == collectorPID && c.property("spoolship-collector.service", "ActiveState") == "active")
        try c.write("/etc/spoolship/collector.toml", collectorToml)
        #expect(try reload("spoolship-collector.service", expect: "configuration reloaded"))
        clock.mark("reloads")

        // kill -s KILL in the middle of a transfer: systemd restarts the agent, which resumes
        // from what the collector holds instead of starting the file over.
        proxy.setFault(.blackholeAfter(bytes: 12 << 20), connections: 1)
        proxy.resetAll()
        try payload.add("big.bin", size: 64 << 20, seed: 64, into: inbox)
        let partials = c.path("/srv/spoolship/.spoolship/partial/\(Self.agentID)")
        let held = Harness.waitUntil(timeout: 60) {
            Harness.files(in: partials).contains { (try? FileManager.default.attributesOfItem(atPath: partials.appendingPathComponent($0).path)[.size] as? Int) ?? 0 >= 8 << 20 }
        }
        #expect(held, "the collector holds part of big.bin: \(Harness.files(in: partials))")
        let restarts = Int(try c.property("spoolship-agent.service", "NRestarts")) ?? -1
        let killedPID = try c.property("spoolship-agent.service", "MainPID")
        #expect(try c.run(["systemctl", "kill", "-s", "KILL", "spoolship-agent.service"]).0 == 0)
        proxy.resetAll()  // the blackholed connection, before the restart (RestartSec=2s) connects anew
        #expect(Harness.waitUntil(timeout: 60) {
            (Int((try? c.property("spoolship-agent.service", "NRestarts")) ?? "") ?? -1) > restarts
                && (try? c.property("spoolship-agent.service", "ActiveState")) == "active"
        }, "systemd restarted the agent")
        #expect(try c.property("spoolship-agent.service", "MainPID") != killedPID)
        #expect(Harness.waitUntil(timeout: 120) { ((try? payload.identical(in: committed)) ?? []).contains("big.bin") }, "big.bin committed after the restart")
        let collectorStatus = try Self.status(c, "collector")
        let agentStatus = try Self.status(c, "agent")
        #expect(Self.resumedBytes(collectorStatus) >= 1 << 20, "the collector resumed big.bin: \(collectorStatus)")
        #expect(Self.resumedBytes(agentStatus) >= 1 << 20, "the restarted agent resumed big.bin: \(agentStatus)")
        clock.mark("kill and resume")

        // The watchdog is enforced: a collector that stops making progress (SIGSTOP) is killed
        // after WatchdogSec and started again.
        let collectorRestarts = Int(try c.property("spoolship-collector.service", "NRestarts")) ?? -1
        #expect(try c.run(["systemctl", "kill", "--kill-who=main", "-s", "STOP", "spoolship-collector.service"]).0 == 0)
        #expect(Harness.waitUntil(timeout: 90) {
            (Int((try? c.property("spoolship-collector.service", "NRestarts")) ?? "") ?? -1) > collectorRestarts
                && (try? c.property("spoolship-collector.service", "ActiveState")) == "active"
        }, "the stopped collector was restarted")
        #expect(try c.journal("spoolship-collector.service").contains("Watchdog timeout"))
        try payload.add("after-watchdog.bin", size: 10_000, seed: 10, into: inbox)
        #expect(Harness.waitUntil(timeout: 60) { ((try? payload.identical(in: committed)) ?? []).contains("after-watchdog.bin") })
        clock.mark("watchdog")

        // Socket activation: with the service stopped, systemd holds the port, and the agent's
        // next connection starts the collector on the socket it passes.
        #expect(try c.run(["systemctl", "stop", "spoolship-agent.service", "spoolship-collector.service"]).0 == 0)
        let (socketStarted, socketOut) = try c.run(["systemctl", "start", "spoolship-collector.socket"])
        #expect(socketStarted == 0, "\(socketOut)")
        #expect(try c.property("spoolship-collector.service", "ActiveState") == "inactive", "nothing has connected yet")
        try payload.add("activated.bin", size: 20_000, seed: 11, into: inbox)
        #expect(try c.run(["systemctl", "start", "spoolship-agent.service"]).0 == 0)
        #expect(Harness.waitUntil(timeout: 60) { ((try? payload.identical(in: committed)) ?? []).contains("activated.bin") }, "shipped to a socket-activated collector")
        #expect(try c.property("spoolship-collector.service", "ActiveState") == "active")
        #expect(try c.journalEntries("spoolship-collector.service").contains {
            ($0["MESSAGE"] as? String) == "listening" && ($0["ADDRESS"] as? String)?.hasPrefix("socket from systemd") == true
        }, "the collector took its socket from systemd")
        clock.mark("socket activation")

        // A clean stop.
        for unit in ["spoolship-agent.service", "spoolship-collector.socket", "spoolship-collector.service"] {
            #expect(try c.run(["systemctl", "stop", unit]).0 == 0)
            let p = try c.show(unit, ["ActiveState", "Result"])
            #expect(p["ActiveState"] == "inactive" && p["Result"] == "success", "\(unit): \(p)")
        }
        #expect(try c.journalEntries("spoolship-agent.service").last { ($0["MESSAGE"] as? String) == "stopped" } != nil, "the agent said it stopped")
        #expect(Harness.files(in: inbox).isEmpty, "nothing left in the spool: \(Harness.files(in: inbox))")
        clock.mark("stop")
        print("real-systemd: \(clock.summary) (the daemons' journals: \(journals.path))")
    }

    /// Whether a TCP connection to 127.0.0.1:port is accepted.
    static func accepts(port: UInt16) -> Bool {
        let s = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(s) }
        var a = sockaddr_in(sin_family: sa_family_t(AF_INET), sin_port: port.bigEndian, sin_addr: in_addr(s_addr: inet_addr("127.0.0.1")), sin_zero: (0, 0, 0, 0, 0, 0, 0, 0))
        return withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(s, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } } == 0
    }

    /// open(O_APPEND | O_CREAT), write, close: a producer that reopens its file by path.
    static func append(_ data: Data, to url: URL) throws {
        let fd = open(url.path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw Harness.Failure.errno("open", url.path) }
        defer { close(fd) }
        let n = data.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        guard n == data.count else { throw Harness.Failure.errno("write", url.path) }
    }

    /// The segments of a log stream in name order, each gunzipped, concatenated (nil on error).
    static func gunzipConcatenated(_ dir: URL) -> Data? {
        let names = Harness.files(in: dir)
        guard !names.isEmpty else { return nil }
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/bin/zcat")
        p.arguments = names.map { dir.appendingPathComponent($0).path }
        let pipe = Pipe()
        p.standardOutput = pipe
        p.standardError = FileHandle.nullDevice
        guard (try? p.run()) != nil else { return nil }
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return p.terminationStatus == 0 ? data : nil
    }

    /// `spoolship status --json` of a daemon in the container, parsed.
    static func status(_ c: Container, _ daemon: String) throws -> [String: Any] {
        let (code, out) = try c.run(["spoolship", "status", "--json", "--socket", "/run/spoolship/\(daemon).sock"])
        guard code == 0, let json = try? JSONSerialization.jsonObject(with: Data(out.utf8)) as? [String: Any] else {
            throw TestFailure("spoolship status of the \(daemon) (exit \(code)): \(out)")
        }
        return json
    }

    static func resumedBytes(_ status: [String: Any]) -> Int {
        ((status["totals"] as? [String: Any])?["resumed_bytes"] as? NSNumber)?.intValue ?? 0
    }
}
