import Foundation
import Glibc
import SpoolshipIO
import Testing

extension Payload {
    /// Like `add`, with `marker` written into the file every 4 KiB (see `writeMarkedFile`).
    mutating func addMarked(_ name: String, size: Int, marker: String, seed: UInt64, into spool: URL) throws {
        let orig = originals.appendingPathComponent(name)
        try writeMarkedFile(orig, size: size, marker: marker, seed: seed)
        let tmp = spool.appendingPathComponent(".\(name).part")
        try? FileManager.default.removeItem(at: tmp)
        try Harness.copyFile(orig, to: tmp)
        guard rename(tmp.path, spool.appendingPathComponent(name).path) == 0 else { throw TestFailure("rename failed") }
        names.append(name)
        sizes[name] = size
    }
}

/// Issue 17: the daemons over TLS, end to end with the real binaries on 127.0.0.1 and
/// certificates made by openssl (TestPKI): files and logs arrive as over plain TCP, and the
/// wire carries none of them in clear.
@Suite(.serialized) struct TLSShippingTests {
    /// Blobs of edge sizes around TLS's 16 KiB record and a rotating log spool, over TLS set
    /// up through the `[tls]` tables of both config files: every file byte-identical and once,
    /// every log record once; the agent says it connected over TLS.
    @Test func blobsAndARotatingLog_overTLS_fromTheConfigFiles_arriveIdenticalAndOnce() throws {
        let c = try Cluster("tls-ship")
        defer { c.remove() }
        let pki = try TestPKI(dir: c.root.appendingPathComponent("pki"))
        let collectorConfig = try c.writeConfig("""
            [tls]
            ca-file = "\(pki.path("ca.pem"))"
            cert-file = "\(pki.path("collector.pem"))"
            key-file = "\(pki.path("collector.key"))"
            min-version = "1.2"
            ktls = "auto"

            """, name: "collector.toml")
        try c.startCollector(extra: ["--config", collectorConfig.path])
        let spool = try c.spool()
        let logs = try c.spool("logs")
        var p = try c.payload()
        let seed = UInt64(Date().timeIntervalSince1970)
        print("tls ship: seed \(seed)")
        for size in [0, 1, 16383, 16384, 16385, 1 << 20, 24 << 20 + 7] {
            try p.add("edge-\(size).bin", size: size, seed: seed &+ UInt64(size), into: spool)
        }
        var rng = Harness.SplitMix64(seed: seed)
        for i in 0..<100 { try p.add("small-\(i).dat", size: Int(rng.next() % 40_000), seed: seed &+ UInt64(1000 + i), into: spool) }
        let agentConfig = try c.writeConfig("""
            [tls]
            ca-file = "\(pki.path("ca.pem"))"
            cert-file = "\(pki.path("agent.pem"))"
            key-file = "\(pki.path("agent.key"))"
            server-name = "collector.test"
            min-version = "1.3"
            ktls = "auto"

            [[logs]]
            name = "app"
            dir = "\(logs.path)"
            rotate-size = "256K"
            rotate-age = 1

            """)
        let agent = try c.startAgent(c.agentArgs(spools: [("spool", spool)], extra: ["--config", agentConfig.path]))
        defer { agent.stop() }
        let producer = try LogProducer(cluster: c, file: logs.appendingPathComponent("api.log"), seconds: 2, rate: 50_000)
        let written = try producer.finish()
        let r = try LogSpoolTests().waitForStream(c, spool: logs, records: written, agent: agent)
        let dest = c.committed()
        #expect(Harness.waitUntil(timeout: 90) { Harness.files(in: spool).isEmpty }, "\(agent.output.suffix(3000))")
        #expect(try p.identical(in: dest).count == p.names.count)
        #expect(Harness.files(in: dest).count == p.names.count, "no extra or duplicate files")
        #expect(r.segments.count > 3, "the log rotated several times: \(r.segments)")
        #expect(c.partials().isEmpty)
        // One line at connect says how: over TLS (the transport's metadata).
        let connected = Cluster.line(in: agent.output, all: ["connected to collector"])
        #expect(connected?.contains("TLS") == true, "\(agent.output.prefix(3000))")
        agent.kill(SIGTERM)
        #expect(agent.wait(timeout: 30) == 0, "SIGTERM is a clean stop:\n\(agent.output.suffix(2000))")
        print("tls ship: \(p.names.count) files (\(p.totalBytes) bytes) and \(written) log records in \(r.segments.count) segments; \(connected ?? "")")
    }

    /// A marker written all through a file is in a loopback capture (tcpdump) of a plain
    /// transfer, and nowhere in one of the same transfer over TLS, which carried as many bytes.
    @Test func aMarkerInThePayload_isOnTheWireInClear_onlyWithoutTLS() throws {
        let marker = "SPOOLSHIP-CLEARTEXT-MARKER-\(UInt32.random(in: 0...UInt32.max))"
        var captured: [Bool: (bytes: Int, seen: Bool)] = [:]
        for tls in [false, true] {
            let c = try Cluster("tls-capture-\(tls)")
            defer { c.remove() }
            let pki = try TestPKI(dir: c.root.appendingPathComponent("pki"))
            let port = tls ? try c.startTLSCollector(pki) : try c.startCollector()
            let spool = try c.spool()
            var p = try c.payload()
            try p.addMarked("secret.bin", size: 2 << 20, marker: marker, seed: 9, into: spool)
            let capture = try PacketCapture(port: port, in: c.root)
            let args = tls ? c.tlsAgentArgs(pki, spools: [("spool", spool)]) : c.agentArgs(spools: [("spool", spool)])
            let (status, out) = try c.runOnce(args + ["--timeout", "60"], timeout: 120)
            // Whatever the transfer was, it carried the whole file (plus framing, or TLS's
            // records): wait until the capture holds that much, then stop it.
            capture.waitForFile(atLeast: 2 << 20)
            let pcap = try capture.stop()
            #expect(capture.droppedByKernel == 0, "the capture missed nothing: \(capture.output)")
            #expect(status == 0, "\(out)")
            #expect(try p.identical(in: c.committed()) == ["secret.bin"])
            captured[tls] = (pcap.count, pcap.range(of: Data(marker.utf8)) != nil)
            #expect(pcap.count > 2 << 20, "the capture holds the transfer (\(pcap.count) bytes): \(capture.output)")
        }
        #expect(captured[false]?.seen == true, "the plain transfer shows the marker: the capture sees payloads")
        #expect(captured[true]?.seen == false, "the TLS transfer never shows it")
        print("capture: plain \(captured[false]!.bytes) bytes (marker seen), TLS \(captured[true]!.bytes) bytes (marker not seen)")
    }

    /// Each connection's path in `spoolship status` and in the metrics, plain and over TLS:
    /// tcp, or tls (ktls where the kernel encrypts), with the transport in words.
    @Test(arguments: [false, true])
    func statusAndMetrics_showEachConnectionsPath(tls: Bool) throws {
        let c = try Cluster("tls-status-\(tls)")
        defer { c.remove() }
        let pki = try TestPKI(dir: c.root.appendingPathComponent("pki"))
        let cPortFile = c.root.appendingPathComponent("collector-metrics.port")
        let metrics = ["--metrics-listen", "127.0.0.1:0", "--metrics-port-file"]
        try c.startCollector(extra: (tls ? pki.flags("collector") : []) + metrics + [cPortFile.path])
        let spool = try c.spool()
        var p = try c.payload()
        try p.add("one.bin", size: 100_000, seed: 1, into: spool)
        let aPortFile = c.root.appendingPathComponent("agent-metrics.port")
        let agent = try c.startAgent(c.agentArgs(spools: [("spool", spool)], extra: (tls ? pki.flags("agent") : []) + metrics + [aPortFile.path]))
        defer { agent.stop() }
        #expect(try Harness.waitUntil(timeout: 60) { try p.identical(in: c.committed()).count == 1 }, "\(agent.output)")
        let path = !tls ? "tcp" : KernelTLS.available ? "ktls" : "tls"
        let am = try StatusTests.json(c.agentSocket())
        #expect(StatusTests.string(am, "connection.state") == "connected", "\(am)")
        #expect(StatusTests.string(am, "connection.path") == path, "\(am)")
        let transport = StatusTests.string(am, "connection.transport") ?? ""
        #expect(tls ? transport.hasPrefix("TLSv1.3 ") : transport.hasPrefix("plain TCP"), "\(transport)")
        let cm = try StatusTests.json(c.collectorSocket)
        let agents = cm["agents"] as? [[String: Any]] ?? []
        #expect(agents.count == 1 && agents.first?["path"] as? String == (!tls ? "tcp" : KernelTLS.available ? "ktls" : "tls"), "\(cm)")
        #expect((agents.first?["transport"] as? String)?.hasPrefix(tls ? "TLSv1.3 " : "plain TCP") == true, "\(cm)")
        // The text form: the agent's transport line, the collector's PATH column.
        let agentText = try StatusTests.spoolship(["status", "--socket", c.agentSocket().path])
        #expect(agentText.stdout.contains("  transport: \(transport)\n"), "\(agentText.stdout)")
        let collectorText = try StatusTests.spoolship(["status", "--socket", c.collectorSocket.path])
        let row = collectorText.stdout.split(separator: "\n").first { $0.contains("agent-1") && $0.contains("127.0.0.1:") }
        #expect(collectorText.stdout.contains("PATH") && row?.split(separator: " ").contains(Substring(agents.first?["path"] as? String ?? "?")) == true,
                "\(collectorText.stdout)")
        // The gauges follow the status at most once a second: poll.
        let aPort = try #require(Harness.readPortFile(aPortFile, timeout: 30))
        let cPort = try #require(Harness.readPortFile(cPortFile, timeout: 30))
        var a = try MetricsTests.scrape(c, port: aPort), m = try MetricsTests.scrape(c, port: cPort)
        let shown = try Harness.waitUntil(timeout: 30) {
            a = try MetricsTests.scrape(c, port: aPort)
            m = try MetricsTests.scrape(c, port: cPort)
            return a.value("spoolship_agent_connection_path{path=\"\(path)\"}") == 1
                && m.value("spoolship_collector_connected_agents_by_path{path=\"\(agents.first?["path"] as? String ?? path)\"}") == 1
        }
        #expect(shown, "agent: \(a.samples.filter { $0.key.contains("path") }), collector: \(m.samples.filter { $0.key.contains("path") })")
        for other in ["tcp", "tls", "ktls"] where other != path {
            #expect(a.value("spoolship_agent_connection_path{path=\"\(other)\"}") == 0)
        }
        let line = Cluster.line(in: agent.output, all: ["connected to collector", "path=\(path)", "transport="])
        #expect(line != nil, "one line at connect with the transport: \(agent.output.prefix(2000))")
        print("status \(tls ? "TLS" : "plain"): path \(path), transport \(transport)")
    }

    // MARK: - The fault rows over TLS

    /// Row 4 over TLS: the fault proxy resets the first connections after random numbers of
    /// (encrypted) bytes; each reconnection resumes where the collector's durable data ends.
    @Test func resetsAtRandomPoints_overTLS_resumeAndArriveOnce() throws {
        let c = try Cluster("tls-reset")
        defer { c.remove() }
        let pki = try TestPKI(dir: c.root.appendingPathComponent("pki"))
        try c.startTLSCollector(pki, extra: ["--checkpoint-bytes", "2097152"])
        let proxy = try c.startProxy()
        let spool = try c.spool()
        var p = try c.payload()
        for i in 0..<3 { try p.add("big-\(i)", size: 20 << 20, seed: UInt64(i), into: spool) }
        for i in 0..<40 { try p.add("small-\(i)", size: 1000 + i * 300, seed: UInt64(100 + i), into: spool) }
        let seed = UInt64(Date().timeIntervalSince1970)
        var rng = Harness.SplitMix64(seed: seed)
        func nextCut() -> Int { 1 + Int(rng.next() % UInt64(12 << 20)) }
        proxy.setFault(.resetAfter(bytes: nextCut()), connections: 1)
        let agent = try c.startAgent(c.tlsAgentArgs(pki, spools: [("spool", spool)], target: proxy.port) + ["--once"])
        defer { agent.stop() }
        var armed = 1
        let finished = Harness.waitUntil(timeout: 180) {
            if proxy.connections >= armed && armed < 6 {
                proxy.setFault(.resetAfter(bytes: nextCut()), connections: 1)
                armed += 1
            }
            return !agent.isRunning
        }
        #expect(finished && agent.wait(timeout: 1) == 0, "\(agent.output.suffix(3000))")
        #expect(try p.identical(in: c.committed()).count == p.names.count)
        #expect(Harness.files(in: c.committed()).count == p.names.count, "each file once")
        #expect(c.partials().isEmpty)
        let cuts = proxy.connections - 1
        // TLS adds a record header and tag per 16 KiB record (under 0.2 %) and a handshake per
        // connection (a few KiB).
        let overhead = p.totalBytes / 500 + proxy.connections * (16 << 10)
        let resent = proxy.bytesFromClient - p.totalBytes - overhead
        print("tls resets (seed \(seed)): \(cuts) cuts, bytes on wire / payload = \(Double(proxy.bytesFromClient) / Double(p.totalBytes))")
        #expect(cuts >= 3, "the transfer was cut several times")
        #expect(resent <= cuts * (6 << 20), "a cut costs what was in flight or past the last checkpoint, never a segment: \(resent) bytes again for \(cuts) cuts")
    }

    /// Row 3 over TLS: the proxy stops forwarding mid-transfer (both ways, the connection
    /// left open). The agent's TLS writes and reads keep their deadline: it sees the stall
    /// within its --io-timeout, reconnects and finishes.
    @Test func blackhole_overTLS_isDetectedByTheDeadline_andTheAgentReconnects() throws {
        let c = try Cluster("tls-blackhole")
        defer { c.remove() }
        let pki = try TestPKI(dir: c.root.appendingPathComponent("pki"))
        try c.startTLSCollector(pki)
        let proxy = try c.startProxy()
        let spool = try c.spool()
        var p = try c.payload()
        try p.add("f", size: 8 << 20, seed: 5, into: spool)
        proxy.setFault(.blackholeAfter(bytes: 1 << 20), connections: 1)
        let ioTimeout = 2.0
        let started = Harness.monotonicNow()
        let (status, out) = try c.runOnce(c.tlsAgentArgs(pki, spools: [("spool", spool)], target: proxy.port, extra: ["--io-timeout", "\(ioTimeout)"]), timeout: 60)
        let took = Harness.monotonicNow() - started
        print("tls blackhole: detected and finished in \(String(format: "%.2f", took)) s with an io timeout of \(ioTimeout) s")
        #expect(status == 0, "\(out)")
        #expect(proxy.connections == 2, "one reconnection")
        #expect(took <= 2 * ioTimeout + 3, "detection within twice the deadline (plus the transfer):\n\(out)")
        #expect(try p.identical(in: c.committed()).count == 1)
    }

    /// An idle TLS connection lives on its pings: with a 1.5 s --io-timeout the agent pings
    /// every half second, and for more than three io timeouts nothing ends the connection; a
    /// file added afterwards ships on it.
    @Test func idleTLSConnection_livesOnItsPings() throws {
        let c = try Cluster("tls-idle")
        defer { c.remove() }
        let pki = try TestPKI(dir: c.root.appendingPathComponent("pki"))
        try c.startTLSCollector(pki)
        let proxy = try c.startProxy()
        let spool = try c.spool()
        var p = try c.payload()
        let ioTimeout = 1.5
        let agent = try c.startAgent(c.tlsAgentArgs(pki, spools: [("spool", spool)], target: proxy.port, extra: ["--io-timeout", "\(ioTimeout)"]))
        defer { agent.stop() }
        try p.add("first", size: 10_000, seed: 1, into: spool)
        #expect(try Harness.waitUntil(timeout: 30) { try p.identical(in: c.committed()).count == 1 }, "\(agent.output)")
        let before = (proxy.bytesFromClient, proxy.bytesToClient)
        // The time is the subject here: the connection must not end within it.
        let ended = Harness.waitUntil(timeout: 3.5 * ioTimeout) { proxy.connections > 1 || agent.output.contains("connection to collector failed") }
        #expect(!ended, "the idle connection ended:\n\(agent.output.suffix(2000))\n\(c.collectorLog.suffix(2000))")
        #expect(proxy.bytesFromClient > before.0 && proxy.bytesToClient > before.1, "pings and their answers crossed")
        try p.add("second", size: 10_000, seed: 2, into: spool)
        #expect(try Harness.waitUntil(timeout: 30) { try p.identical(in: c.committed()).count == 2 }, "\(agent.output.suffix(2000))")
        #expect(proxy.connections == 1)
    }

    enum Victim: String, CaseIterable, Sendable { case collector, agent }

    /// Row 7 over TLS: kill -9 of the collector or of the agent in the middle of a segment;
    /// after restarts everything arrives once and no partial is left.
    @Test(arguments: Victim.allCases)
    func killNine_midTransfer_overTLS_everythingArrivesOnce(victim: Victim) throws {
        let c = try Cluster("tls-kill-\(victim)")
        defer { c.remove() }
        let pki = try TestPKI(dir: c.root.appendingPathComponent("pki"))
        let port = try c.startTLSCollector(pki, extra: ["--checkpoint-bytes", "2097152"])
        let spool = try c.spool()
        var p = try c.payload()
        for i in 0..<2 { try p.add("k\(i)", size: 40 << 20, seed: UInt64(i), into: spool) }
        for i in 0..<30 { try p.add("s\(i)", size: 4096 + i, seed: UInt64(100 + i), into: spool) }
        let args = c.tlsAgentArgs(pki, spools: [("spool", spool)])
        var agent = try c.startAgent(args)
        defer { agent.stop() }
        var kills = 0
        for round in 0..<2 {
            let mid = Harness.waitUntil(timeout: 60) {
                c.partials().contains { name in
                    let size = (try? FileManager.default.attributesOfItem(atPath: c.dataDir.appendingPathComponent(".spoolship/partial/agent-1/\(name)").path)[.size] as? Int) ?? 0
                    return size > (6 << 20) * (round + 1)
                }
            }
            if !mid { break }
            if victim == .collector {
                c.collector?.kill(SIGKILL)
                _ = c.collector?.wait(timeout: 10)
                try c.startTLSCollector(pki, port: port, extra: ["--checkpoint-bytes", "2097152"])
            } else {
                agent.kill(SIGKILL)
                _ = agent.wait(timeout: 10)
                agent = try c.startAgent(args)
            }
            kills += 1
        }
        #expect(kills >= 1, "a transfer was caught in the middle")
        let (done, lost) = c.waitForSpoolToEmpty(spool, p, timeout: 120)
        #expect(lost.isEmpty, "acknowledged and deleted, yet not committed: \(lost.prefix(5))")
        agent.kill(SIGTERM)
        #expect(agent.wait(timeout: 30) == 0, "\(agent.output.suffix(2000))")
        #expect(done, "agent output:\n\(agent.output.suffix(3000))")
        #expect(try p.identical(in: c.committed()).count == p.names.count)
        #expect(Harness.files(in: c.committed()).count == p.names.count, "each file once")
        #expect(c.partials().isEmpty, "no stray partials after recovery")
        print("tls kill -9 \(victim): \(kills) kills")
    }

    /// Row 10 over TLS: the collector's disk fills in the middle of a segment; it keeps what
    /// was durable and says no space; once space is freed the agent resumes and the file
    /// arrives once.
    @Test func dataDirFullMidSegment_overTLS_noSpace_thenResumesWhenFreed() throws {
        let c = try Cluster("tls-enospc")
        defer { c.remove() }
        let pki = try TestPKI(dir: c.root.appendingPathComponent("pki"))
        try FileManager.default.createDirectory(at: c.dataDir, withIntermediateDirectories: true)
        #expect(Process.run("mount", ["-t", "tmpfs", "-o", "size=32m", "spoolship-tls-enospc", c.dataDir.path]) == 0, "the tests run as root and mount a small tmpfs")
        defer { _ = Process.run("umount", ["-l", c.dataDir.path]) }
        let filler = c.dataDir.appendingPathComponent("filler")
        try Harness.writeRandomFile(filler, size: 16 << 20, seed: 1)
        try c.startTLSCollector(pki, extra: ["--free-space-reserve", "0", "--checkpoint-bytes", "2097152"])
        let spool = try c.spool()
        var p = try c.payload()
        try p.add("big.bin", size: 24 << 20, seed: 12, into: spool)
        let agent = try c.startAgent(c.tlsAgentArgs(pki, spools: [("spool", spool)]))
        defer { agent.stop() }
        #expect(Harness.waitUntil(timeout: 60) { c.collectorLog.contains("no space left on the collector's disk") }, "\(c.collectorLog.suffix(3000))")
        #expect(Harness.waitUntil(timeout: 30) { agent.output.contains("connection to collector failed") }, "\(agent.output.suffix(3000))")
        #expect(c.partials().count == 1, "the partial stays: what was durable is kept")
        #expect(Harness.files(in: spool) == ["big.bin"], "the agent keeps its file")
        try FileManager.default.removeItem(at: filler)
        #expect(Harness.waitUntil(timeout: 90) { (try? p.identical(in: c.committed()).count) == 1 && Harness.files(in: spool).isEmpty }, "\(agent.output.suffix(3000))")
        #expect(agent.output.contains("resuming segment"), "resumed from what the collector held:\n\(agent.output.suffix(3000))")
        #expect(c.partials().isEmpty)
    }

    // MARK: - Reload

    /// SIGHUP on the collector: a new certificate (same CA, another serial) is presented to
    /// new connections; a broken key, then a key of another certificate, are refused at the
    /// reload, naming the file, and the running pair stays in use; agents ship throughout.
    @Test func collectorReload_newCertificateForNewConnections_brokenOrMismatchedKeyKeepsTheOld() throws {
        let c = try Cluster("tls-reload-collector")
        defer { c.remove() }
        let pki = try TestPKI(dir: c.root.appendingPathComponent("pki"))
        try pki.leaf("collector-renewed", san: "IP:127.0.0.1,DNS:collector.test")
        let live = try c.spool("live")
        let cert = live.appendingPathComponent("collector.pem"), key = live.appendingPathComponent("collector.key")
        try FileManager.default.copyItem(atPath: pki.path("collector.pem"), toPath: cert.path)
        try FileManager.default.copyItem(atPath: pki.path("collector.key"), toPath: key.path)
        let port = try c.startCollector(extra: ["--tls-ca-file", pki.path("ca.pem"), "--tls-cert-file", cert.path, "--tls-key-file", key.path])
        let old = try pki.serial("collector"), renewed = try pki.serial("collector-renewed")
        #expect(old != renewed)
        #expect(try SClient.presentedSerial(port: port, pki: pki, log: c.nextLog("s_client")) == old)
        let spool = try c.spool()
        var p = try c.payload()
        func ships(_ tag: String) throws {
            try p.add("file-\(tag)", size: 300_000, seed: UInt64(p.names.count), into: spool)
            let (status, out) = try c.runOnce(c.tlsAgentArgs(pki, spools: [("spool", spool)], extra: ["--timeout", "60"]), timeout: 120)
            #expect(status == 0, "\(tag): \(out)")
            #expect(try p.identical(in: c.committed()).count == p.names.count, "\(tag)")
        }
        try ships("before")
        // An agent (another id) connected before the reloads: its connection goes on through them.
        let proxy = try c.startProxy()
        let liveSpool = try c.spool("live-spool")
        var lp = try c.payload("live-originals")
        let liveAgent = try c.startAgent(c.tlsAgentArgs(pki, leaf: "agent-2", id: "agent-2", state: "state-live", spools: [("spool", liveSpool)], target: proxy.port))
        defer { liveAgent.stop() }
        func liveShips(_ tag: String) throws {
            try lp.add("live-\(tag)", size: 100_000, seed: UInt64(40 + lp.names.count), into: liveSpool)
            #expect(try Harness.waitUntil(timeout: 60) { try lp.identical(in: c.committed(agent: "agent-2")).count == lp.names.count },
                    "\(tag): \(liveAgent.output.suffix(2000))")
        }
        try liveShips("before")

        // A new pair: new connections get the new certificate.
        try replaceFile(key, with: Data(contentsOf: URL(fileURLWithPath: pki.path("collector-renewed.key"))))
        try replaceFile(cert, with: Data(contentsOf: URL(fileURLWithPath: pki.path("collector-renewed.pem"))))
        c.collector?.kill(SIGHUP)
        var presented = old
        #expect(try Harness.waitUntil(timeout: 30) {
            presented = try SClient.presentedSerial(port: port, pki: pki, log: c.nextLog("s_client"))
            return presented == renewed
        }, "the collector still presents \(presented), not the renewed \(renewed):\n\(c.collectorLog.suffix(2000))")
        try ships("renewed")
        try liveShips("renewed")

        // A broken key: the reload fails, naming the file; the renewed pair stays.
        try replaceFile(key, with: Data("-----BEGIN PRIVATE KEY-----\nbroken\n-----END PRIVATE KEY-----\n".utf8))
        c.collector?.kill(SIGHUP)
        let failed = c.waitForCollectorLine(["reload failed; keeping the running configuration", key.path])
        #expect(failed != nil, "\(c.collectorLog.suffix(3000))")
        #expect(c.collector?.isRunning == true)
        #expect(try SClient.presentedSerial(port: port, pki: pki, log: c.nextLog("s_client")) == renewed)
        try ships("broken-key")

        // A valid key of another certificate: the pair does not match; refused the same way.
        try replaceFile(key, with: Data(contentsOf: URL(fileURLWithPath: pki.path("collector.key"))))
        let before = c.collectorLog.components(separatedBy: "reload failed; keeping the running configuration").count
        c.collector?.kill(SIGHUP)
        #expect(Harness.waitUntil(timeout: 30) { c.collectorLog.components(separatedBy: "reload failed; keeping the running configuration").count > before },
                "\(c.collectorLog.suffix(3000))")
        #expect(Cluster.line(in: c.collectorLog, all: ["reload failed; keeping the running configuration"], any: [key.path, cert.path]) != nil)
        #expect(try SClient.presentedSerial(port: port, pki: pki, log: c.nextLog("s_client")) == renewed)
        try ships("mismatched-key")
        try liveShips("mismatched-key")
        #expect(proxy.connections == 1, "the connection made before the reloads is the one that shipped after them:\n\(liveAgent.output.suffix(2000))")
        print("collector reload: serial \(old) -> \(renewed); a broken and a mismatched key kept \(renewed)")
    }

    /// SIGHUP on the agent: a broken key is refused at the reload (naming the file) and the
    /// running pair goes on working for new connections; a new, valid pair is used from the
    /// next connection on (an expired certificate, so that the collector says which one came).
    @Test func agentReload_brokenKeyKeepsTheOld_newPairUsedForTheNextConnection() throws {
        let c = try Cluster("tls-reload-agent")
        defer { c.remove() }
        let pki = try TestPKI(dir: c.root.appendingPathComponent("pki"))
        try pki.leaf("agent-renewed", san: "DNS:agent-1")
        try c.startTLSCollector(pki)
        let proxy = try c.startProxy()
        let live = try c.spool("live")
        let cert = live.appendingPathComponent("agent.pem"), key = live.appendingPathComponent("agent.key")
        try FileManager.default.copyItem(atPath: pki.path("agent.pem"), toPath: cert.path)
        try FileManager.default.copyItem(atPath: pki.path("agent.key"), toPath: key.path)
        let spool = try c.spool()
        var p = try c.payload()
        let agent = try c.startAgent(c.agentArgs(spools: [("spool", spool)], target: proxy.port,
                                                 extra: ["--tls-ca-file", pki.path("ca.pem"), "--tls-cert-file", cert.path, "--tls-key-file", key.path]))
        defer { agent.stop() }
        func arrives(_ tag: String) throws -> Bool {
            try p.add("file-\(tag)", size: 200_000, seed: UInt64(p.names.count), into: spool)
            return try Harness.waitUntil(timeout: 60) { try p.identical(in: c.committed()).count == p.names.count }
        }
        #expect(try arrives("first"), "\(agent.output.suffix(2000))")

        try replaceFile(key, with: Data("-----BEGIN PRIVATE KEY-----\nbroken\n-----END PRIVATE KEY-----\n".utf8))
        agent.kill(SIGHUP)
        #expect(Harness.waitUntil(timeout: 30) { Cluster.line(in: agent.output, all: ["reload failed; keeping the running configuration", key.path]) != nil },
                "\(agent.output.suffix(3000))")
        // A new connection, made after the failed reload, still uses the running pair.
        let connections = proxy.connections
        proxy.resetAll()
        #expect(Harness.waitUntil(timeout: 30) { proxy.connections > connections }, "the agent reconnects")
        #expect(try arrives("after-broken-key"), "\(agent.output.suffix(3000))\n\(c.collectorLog.suffix(2000))")

        // A valid pair the collector refuses (expired): the next connection presents it.
        try replaceFile(key, with: Data(contentsOf: URL(fileURLWithPath: pki.path("agent-expired.key"))))
        try replaceFile(cert, with: Data(contentsOf: URL(fileURLWithPath: pki.path("agent-expired.pem"))))
        agent.kill(SIGHUP)
        // The reload is asynchronous: cut the connection until one comes with the new pair.
        let refused = Harness.waitUntil(timeout: 30) {
            if c.collectorLog.contains("certificate has expired") { return true }
            proxy.resetAll()
            return Harness.waitUntil(timeout: 1) { c.collectorLog.contains("certificate has expired") }
        }
        #expect(refused, "the collector saw the reloaded, expired certificate:\n\(c.collectorLog.suffix(3000))")
        // And a good pair again: the agent, retrying, gets through with it.
        try replaceFile(key, with: Data(contentsOf: URL(fileURLWithPath: pki.path("agent-renewed.key"))))
        try replaceFile(cert, with: Data(contentsOf: URL(fileURLWithPath: pki.path("agent-renewed.pem"))))
        agent.kill(SIGHUP)
        #expect(try arrives("renewed"), "\(agent.output.suffix(3000))\n\(c.collectorLog.suffix(2000))")
        agent.kill(SIGTERM)
        #expect(agent.wait(timeout: 30) == 0)
    }

    // MARK: - Kernel TLS

    /// `--ktls require` without kernel TLS: each daemon refuses to start (exit 64), naming
    /// kernel TLS. Where the kernel has it, both start.
    @Test func ktlsRequire_refusesToStartWithoutKernelTLS() throws {
        let c = try Cluster("tls-ktls-require")
        defer { c.remove() }
        let pki = try TestPKI(dir: c.root.appendingPathComponent("pki"))
        let spool = try c.spool()
        let collector = try Daemon("spoolship-collector", ["--config", c.emptyConfig.path, "--control-socket", "none", "--listen", "127.0.0.1:0",
                                                            "--data-dir", c.dataDir.path, "--ktls", "require"] + pki.flags("collector"),
                                   log: c.nextLog("collector"))
        defer { collector.stop() }
        let agent = try Daemon("spoolship-agent", c.tlsAgentArgs(pki, spools: [("spool", spool)], target: unusedPort(), extra: ["--ktls", "require"]),
                               log: c.nextLog("agent"))
        defer { agent.stop() }
        if KernelTLS.available {
            print("ktls require: this kernel has TLS; both daemons must start")
            #expect(collector.wait(timeout: 5) == nil, "\(collector.output)")
            #expect(agent.wait(timeout: 5) == nil, "\(agent.output)")
        } else {
            print("ktls require: \(KernelTLS.reason); both daemons must refuse to start")
            for (name, d) in [("collector", collector), ("agent", agent)] {
                #expect(d.wait(timeout: 30) == 64, "\(name): \(d.output)")
                #expect(d.output.contains("ktls = require") && d.output.contains("kernel has no TLS"), "\(name) names kernel TLS: \(d.output)")
            }
        }
    }

    /// TLS takes all three files or none; a missing file or a key that is not the
    /// certificate's is named at start. Either daemon exits 64 before it listens or connects.
    @Test func incompleteOrBrokenTLSFiles_refusedAtStart_namingWhatIsWrong() throws {
        let c = try Cluster("tls-start-errors")
        defer { c.remove() }
        let pki = try TestPKI(dir: c.root.appendingPathComponent("pki"))
        let spool = try c.spool()
        func collector(_ tls: [String]) throws -> Daemon {
            try Daemon("spoolship-collector", ["--config", c.emptyConfig.path, "--control-socket", "none", "--listen", "127.0.0.1:0", "--data-dir", c.dataDir.path] + tls,
                       log: c.nextLog("collector"))
        }
        func agent(_ tls: [String]) throws -> Daemon {
            try Daemon("spoolship-agent", c.agentArgs(spools: [("spool", spool)], target: unusedPort(), extra: tls + ["--once"]), log: c.nextLog("agent"))
        }
        let cases: [(what: String, tls: [String], says: [String])] = [
            ("only a certificate", ["--tls-cert-file", pki.path("collector.pem")], ["TLS needs tls.ca-file, tls.cert-file and tls.key-file together", "--tls-ca-file", "--tls-key-file"]),
            ("a missing CA file", ["--tls-ca-file", pki.path("nope.pem"), "--tls-cert-file", pki.path("agent.pem"), "--tls-key-file", pki.path("agent.key")], [pki.path("nope.pem")]),
            ("another certificate's key", ["--tls-ca-file", pki.path("ca.pem"), "--tls-cert-file", pki.path("agent.pem"), "--tls-key-file", pki.path("collector.key")],
             [pki.path("collector.key"), pki.path("agent.pem")]),
        ]
        for k in cases {
            for (name, d) in [("collector", try collector(k.tls)), ("agent", try agent(k.tls))] {
                #expect(d.wait(timeout: 30) == 64, "\(name), \(k.what): \(d.output)")
                #expect(k.says.allSatisfy { d.output.contains($0) }, "\(name), \(k.what): \(d.output)")
                d.stop()
            }
        }
    }

    /// What the agent's read calls (read, pread64, readv, preadv, preadv2) returned, and what
    /// it mapped of files for reading (the CRC of 1 MiB and more goes over a mapping), in bytes,
    /// while it shipped one `size`-byte file over TLS with `--ktls KTLS` (strace attached to
    /// it before the file came, stopped once the file was committed).
    static func agentReadBytes(_ c: Cluster, _ pki: TestPKI, ktls: String, size: Int) throws -> Int {
        let spool = try c.spool("spool-\(ktls)")
        var p = try c.payload("originals-\(ktls)")
        let agent = try c.startAgent(c.tlsAgentArgs(pki, state: "state-\(ktls)", spools: [("spool", spool)], extra: ["--ktls", ktls]))
        defer { agent.stop() }
        #expect(Harness.waitUntil(timeout: 30) { agent.output.contains("connected to collector") }, "\(agent.output)")
        let trace = c.root.appendingPathComponent("reads-\(ktls).strace")
        let strace = try Daemon(signalsUnblocked: ["/usr/bin/strace", "-f", "-s", "0", "-o", trace.path, "-e", "trace=read,pread64,readv,preadv,preadv2,mmap",
                                                   "-p", "\(agent.pid)"], log: c.nextLog("strace"))
        defer { strace.stop() }
        // strace 6 says "Process N attached with K threads" once all are; older ones say
        // "Process N attached" for each thread.
        let threads = { (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(agent.pid)/task").count) ?? 0 }
        #expect(Harness.waitUntil(timeout: 30) {
            strace.output.contains(" attached with ") || strace.output.components(separatedBy: " attached").count - 1 >= threads()
        }, "\(strace.output)")
        // A name and content of its own for each run: the collector would take a second
        // payload.bin of the same bytes as already there, and nothing would be sent.
        try p.add("payload-\(ktls).bin", size: size, seed: UInt64(ktls.utf8.count) &* 7919, into: spool)
        #expect(try Harness.waitUntil(timeout: 60) { try p.identical(in: c.committed()).count == 1 && Harness.files(in: spool).isEmpty },
                "shipped and acknowledged:\n\(agent.output.suffix(2000))")
        strace.kill(SIGTERM)
        #expect(strace.wait(timeout: 30) != nil, "strace stops and detaches")
        let tally = Harness.straceTally(try String(contentsOf: trace, encoding: .utf8))
        return tally.read + tally.mapped
    }

    /// Without kernel TLS the agent goes over each byte of a file twice: once for its CRC when
    /// it seals it (through a mapping), once to encrypt it (pread + SSL_write). This is also what shows that the
    /// count below can see a payload read.
    @Test func withoutKernelTLS_theAgentReadsThePayloadForTheCRCAndToEncryptIt() throws {
        let c = try Cluster("tls-reads-user")
        defer { c.remove() }
        let pki = try TestPKI(dir: c.root.appendingPathComponent("pki"))
        try c.startTLSCollector(pki)
        let size = 8 << 20
        let off = try Self.agentReadBytes(c, pki, ktls: "off", size: size)
        print("user-space TLS: the agent's reads returned \(off) bytes for a \(size)-byte file")
        #expect(off >= 2 * size && off < 2 * size + size / 4, "\(off) bytes read for a \(size)-byte file")
    }

    /// With kernel TLS the agent sends files with SSL_sendfile: the kernel encrypts from the
    /// page cache, and the agent reads the file only for its CRC, not to send it.
    @Test(.enabled(if: KernelTLS.available, "needs kernel TLS: \(KernelTLS.reason)"))
    func ktls_theAgentMakesNoPayloadReadToSend() throws {
        let c = try Cluster("tls-reads-ktls")
        defer { c.remove() }
        let pki = try TestPKI(dir: c.root.appendingPathComponent("pki"))
        try c.startTLSCollector(pki)
        let size = 8 << 20
        let off = try Self.agentReadBytes(c, pki, ktls: "off", size: size)
        let on = try Self.agentReadBytes(c, pki, ktls: "require", size: size)
        print("kernel TLS: the agent's reads returned \(on) bytes with it, \(off) without, for a \(size)-byte file")
        #expect(on >= size && on < size + size / 8, "with kernel TLS only the CRC's read: \(on) bytes")
        #expect(off - on >= size - size / 8, "the send's read is the one kernel TLS saves")
    }
}

/// Refusals, each before any payload: a clear error on both sides, nothing written at the
/// collector, and the collector goes on serving a well-configured agent.
@Suite struct TLSRefusalTests {
    enum Case: String, CaseIterable, Sendable {
        case agentFromAnotherCA, agentExpired, agentSANWithoutTheID, agentIDOnlyInTheCN, agentSANNearMisses, collectorNameMismatch,
             plaintextAgentToTLSCollector, tlsAgentToPlaintextCollector
    }

    struct Setup {
        var collector: [String]
        var agent: [String]
        var goodAgent: [String]
        /// The agent gives up for good (else it retries with backoff until stopped).
        var stops: Bool
        var agentAll: [String]
        var agentAny: [String] = []
        var collectorAll: [String]
        var collectorAny: [String] = []
    }

    static func setup(_ k: Case, _ pki: TestPKI) -> Setup {
        let verifyFailed = ["certificate verify failed", "unknown ca", "unable to get local issuer certificate"]
        switch k {
        case .agentFromAnotherCA:
            return Setup(collector: pki.flags("collector"), agent: pki.flags("stranger", ca: "ca"), goodAgent: pki.flags("agent"), stops: false,
                         agentAll: ["connection to collector failed", "unknown ca"], collectorAll: ["TLS handshake failed"], collectorAny: verifyFailed)
        case .agentExpired:
            return Setup(collector: pki.flags("collector"), agent: pki.flags("agent-expired"), goodAgent: pki.flags("agent"), stops: false,
                         agentAll: ["connection to collector failed", "certificate expired"],
                         collectorAll: ["TLS handshake failed", "certificate verify failed", "certificate has expired"])
        case .agentSANWithoutTheID:
            return Setup(collector: pki.flags("collector"), agent: pki.flags("agent-2"), goodAgent: pki.flags("agent"), stops: true,
                         agentAll: ["subjectAltName"], collectorAll: ["authentication failed", "subjectAltName", "agent.id=agent-1"])
        case .agentIDOnlyInTheCN:
            return Setup(collector: pki.flags("collector"), agent: pki.flags("agent-cn-only"), goodAgent: pki.flags("agent"), stops: true,
                         agentAll: ["subjectAltName"], collectorAll: ["authentication failed", "subjectAltName", "agent.id=agent-1"])
        case .agentSANNearMisses:
            // Names that are like agent-1 but not it: the match is exact (no case folding,
            // wildcard, prefix, suffix or URI path).
            return Setup(collector: pki.flags("collector"), agent: pki.flags("agent-near-misses"), goodAgent: pki.flags("agent"), stops: true,
                         agentAll: ["subjectAltName", "agent-10"], collectorAll: ["authentication failed", "subjectAltName", "agent.id=agent-1"])
        case .collectorNameMismatch:
            // The agent asks for 127.0.0.1 (the host of --collector); the certificate is for
            // elsewhere.test only. Asking for that name instead gets through.
            return Setup(collector: pki.flags("collector-elsewhere"), agent: pki.flags("agent"),
                         goodAgent: pki.flags("agent") + ["--tls-server-name", "elsewhere.test"], stops: false,
                         agentAll: ["connection to collector failed", "certificate verify failed", "IP address mismatch"],
                         collectorAll: ["TLS handshake failed", "bad certificate"])
        case .plaintextAgentToTLSCollector:
            return Setup(collector: pki.flags("collector"), agent: [], goodAgent: pki.flags("agent"), stops: true,
                         agentAll: ["requires TLS"], collectorAll: ["refusing peer", "requires TLS", "connected without"])
        case .tlsAgentToPlaintextCollector:
            return Setup(collector: [], agent: pki.flags("agent"), goodAgent: [], stops: true,
                         agentAll: ["does not use TLS"], collectorAll: ["refusing peer", "started a TLS handshake", "does not use TLS"])
        }
    }

    @Test(arguments: Case.allCases)
    func refused_beforeAnyPayload_clearOnBothSides_nothingWritten(_ k: Case) throws {
        let c = try Cluster("tls-refused-\(k)")
        defer { c.remove() }
        let pki = try TestPKI(dir: c.root.appendingPathComponent("pki"))
        if k == .agentSANNearMisses {
            try pki.leaf("agent-near-misses", san: "DNS:agent-10,DNS:xagent-1,DNS:AGENT-1,DNS:agent-1.test,DNS:*,URI:spoolship://agent/agent-1")
        }
        let s = Self.setup(k, pki)
        try c.startCollector(extra: s.collector)
        let proxy = try c.startProxy()
        let spool = try c.spool()
        var p = try c.payload()
        try p.add("payload.bin", size: 1 << 20, seed: 1, into: spool)
        let before = c.everythingInDataDir()
        let agent = try c.startAgent(c.agentArgs(spools: [("spool", spool)], target: proxy.port, extra: s.agent + ["--once", "--timeout", "60"]))
        defer { agent.stop() }
        let agentSaid = Harness.waitUntil(timeout: 30) { Cluster.line(in: agent.output, all: s.agentAll, any: s.agentAny) != nil }
        #expect(agentSaid, "\(k): the agent says why:\n\(agent.output.suffix(3000))")
        let line = c.waitForCollectorLine(s.collectorAll, any: s.collectorAny)
        #expect(line != nil, "\(k): the collector says why:\n\(c.collectorLog.suffix(3000))")
        if s.stops {
            #expect(agent.wait(timeout: 30) == 1, "\(k): the agent stops for good:\n\(agent.output.suffix(3000))")
            #expect(!agent.output.contains("no progress for"), "\(k): it stopped at the refusal, not at its --timeout")
        } else {
            agent.kill(SIGTERM)
            #expect(agent.wait(timeout: 30) == 1, "\(k): a --once run stopped before it shipped:\n\(agent.output.suffix(3000))")
        }
        #expect(proxy.bytesFromClient < 256 << 10, "\(k): no payload crossed: \(proxy.bytesFromClient) bytes from the agent")
        #expect(c.everythingInDataDir() == before, "\(k): nothing written at the collector")
        #expect(Harness.files(in: spool) == ["payload.bin"], "\(k): the agent keeps its file")
        // The refusal was about this agent: a well-configured one ships.
        let (status, out) = try c.runOnce(c.agentArgs(state: "state-good", spools: [("spool", spool)], extra: s.goodAgent + ["--timeout", "60"]), timeout: 120)
        #expect(status == 0, "\(k): the well-configured agent ships:\n\(out)")
        #expect(try p.identical(in: c.committed()) == ["payload.bin"], "\(k)")
        print("refused \(k): agent: \(Cluster.line(in: agent.output, all: s.agentAll, any: s.agentAny) ?? "-")\n    collector: \(line ?? "-")")
    }

    /// TLS and the agents file together: the certificate must name the agent, and the agent
    /// must prove its secret as well. A good certificate with a wrong secret is refused as
    /// without TLS; both right, it ships.
    @Test func tlsAndSecrets_eachStillChecked() throws {
        let c = try Cluster("tls-and-secrets")
        defer { c.remove() }
        let pki = try TestPKI(dir: c.root.appendingPathComponent("pki"))
        func privateFile(_ name: String, _ text: String) throws -> URL {
            let u = c.root.appendingPathComponent(name)
            try text.write(to: u, atomically: true, encoding: .utf8)
            #expect(chmod(u.path, 0o600) == 0)
            return u
        }
        let agents = try privateFile("agents", "agent-1 \(AuthTests.secret)\n")
        try c.startTLSCollector(pki, extra: ["--agents", agents.path])
        let spool = try c.spool()
        var p = try c.payload()
        try p.add("x.bin", size: 100_000, seed: 1, into: spool)
        let before = c.everythingInDataDir()
        let wrong = try privateFile("wrong", "not-the-secret-0123456789\n")
        let (s1, o1) = try c.runOnce(c.tlsAgentArgs(pki, spools: [("spool", spool)], extra: ["--secret-file", wrong.path, "--timeout", "30"]), timeout: 60)
        #expect(s1 == 1 && o1.contains("could not prove that it holds this agent's secret"), "\(o1)")
        #expect(c.everythingInDataDir() == before, "nothing written")
        let good = try privateFile("good", AuthTests.secret + "\n")
        let (s2, o2) = try c.runOnce(c.tlsAgentArgs(pki, state: "state-good", spools: [("spool", spool)], extra: ["--secret-file", good.path, "--timeout", "30"]), timeout: 60)
        #expect(s2 == 0, "\(o2)")
        #expect(try p.identical(in: c.committed()) == ["x.bin"])
    }

    /// A client with no certificate (openssl s_client with the CA only): the collector
    /// refuses it in the handshake and says so; nothing is written.
    @Test func aClientWithoutCertificate_isRefusedByTheCollector() throws {
        let c = try Cluster("tls-no-client-cert")
        defer { c.remove() }
        let pki = try TestPKI(dir: c.root.appendingPathComponent("pki"))
        let port = try c.startTLSCollector(pki)
        let before = c.everythingInDataDir()
        let out = try SClient.run(port: port, pki: pki, leaf: nil, log: c.nextLog("s_client"))
        let line = c.waitForCollectorLine([], any: ["did not return a certificate", "certificate required"])
        #expect(line != nil, "the collector says the client sent no certificate:\n\(c.collectorLog.suffix(3000))\ns_client:\n\(out)")
        #expect(c.everythingInDataDir() == before)
        // The same client with a certificate is let through the handshake.
        let ok = try SClient.run(port: port, pki: pki, leaf: "agent", log: c.nextLog("s_client"))
        #expect(ok.contains("Verify return code: 0 (ok)"), "\(ok)")
        print("no client certificate: \(line ?? "-")")
    }

    /// `--tls-min-version 1.3` on the collector: a TLS 1.2 client (openssl s_client -tls1_2,
    /// with a good certificate) is refused in the handshake; the default (1.2) lets it in.
    @Test func minVersion13_refusesATLS12Client_theDefaultTakesIt() throws {
        let c = try Cluster("tls-min-version")
        defer { c.remove() }
        let pki = try TestPKI(dir: c.root.appendingPathComponent("pki"))
        let strict = try c.startTLSCollector(pki, extra: ["--tls-min-version", "1.3"])
        let refused = try SClient.run(port: strict, pki: pki, leaf: "agent", log: c.nextLog("s_client"), extra: ["-tls1_2"])
        #expect(!refused.contains("Verify return code: 0 (ok)") || refused.contains("alert protocol version"), "\(refused)")
        let line = c.waitForCollectorLine(["TLS handshake failed"], any: ["unsupported protocol", "protocol version"])
        #expect(line != nil, "\(c.collectorLog.suffix(2000))")
        let lenient = try Cluster("tls-min-version-default")
        defer { lenient.remove() }
        let port = try lenient.startTLSCollector(pki)
        let ok = try SClient.run(port: port, pki: pki, leaf: "agent", log: lenient.nextLog("s_client"), extra: ["-tls1_2"])
        #expect(ok.contains("Protocol  : TLSv1.2") || ok.contains("TLSv1.2, Cipher is"), "\(ok)")
        #expect(ok.contains("Verify return code: 0 (ok)"), "\(ok)")
        print("min version 1.3: \(line ?? "-")")
    }

    /// A peer that opens a TLS handshake and goes silent is dropped by the collector at its
    /// --handshake-timeout.
    @Test func aStalledHandshake_isDroppedByTheCollectorAtItsDeadline() throws {
        let c = try Cluster("tls-stall-collector")
        defer { c.remove() }
        let pki = try TestPKI(dir: c.root.appendingPathComponent("pki"))
        let deadline = 2.0
        let port = try c.startTLSCollector(pki, extra: ["--handshake-timeout", "\(deadline)"])
        let s = try Socket.connect(Endpoint(host: "127.0.0.1", port: port), timeout: 10)
        defer { s.abort() }
        s.setTimeouts(receive: 30, send: 10)
        // A TLS record header announcing a 512-byte ClientHello, and then nothing.
        try s.sendAll([0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc])
        let t0 = Harness.monotonicNow()
        let got = try? s.receive(max: 4096)
        let took = Harness.monotonicNow() - t0
        print("tls stall: the collector dropped the silent handshake after \(String(format: "%.2f", took)) s (deadline \(deadline) s); it sent \(got?.count ?? -1) bytes")
        #expect(took >= deadline - 0.5, "not before the deadline")
        #expect(took <= deadline + 5, "at the deadline")
        #expect(c.collector?.isRunning == true)
        let line = c.waitForCollectorLine(["TLS handshake with", "connection ended"], any: ["timed out"], timeout: 10)
        #expect(line != nil, "the collector says why it dropped the peer:\n\(c.collectorLog.suffix(2000))")
        print("tls stall: \(line ?? "-")")
    }

    /// A peer that finishes the TLS handshake (a good certificate) and then sends no HELLO is
    /// dropped too: one deadline from the accept covers the TLS handshake and HELLO.
    @Test func aPeerSilentAfterTheTLSHandshake_isDroppedAtTheHandshakeDeadline() throws {
        let c = try Cluster("tls-stall-hello")
        defer { c.remove() }
        let pki = try TestPKI(dir: c.root.appendingPathComponent("pki"))
        let deadline = 2.0
        let port = try c.startTLSCollector(pki, extra: ["--handshake-timeout", "\(deadline)"])
        let client = Process()
        client.executableURL = URL(fileURLWithPath: "/usr/bin/openssl")
        client.arguments = ["s_client", "-connect", "127.0.0.1:\(port)", "-CAfile", pki.path("ca.pem"), "-cert", pki.path("agent.pem"), "-key", pki.path("agent.key")]
        let stdin = Pipe()  // held open: s_client waits for input, sending nothing
        let log = c.nextLog("s_client")
        _ = FileManager.default.createFile(atPath: log.path, contents: nil)
        let out = try FileHandle(forWritingTo: log)
        client.standardInput = stdin
        client.standardOutput = out
        client.standardError = out
        let t0 = Harness.monotonicNow()
        try client.run()
        try? out.close()
        defer { if client.isRunning { client.terminate() }; try? stdin.fileHandleForWriting.close() }
        let ended = Harness.waitUntil(timeout: deadline + 10) { !client.isRunning }
        let took = Harness.monotonicNow() - t0
        let said = String(decoding: FileManager.default.contents(atPath: log.path) ?? Data(), as: UTF8.self)
        print("tls hello stall: the collector closed the silent TLS connection after \(String(format: "%.2f", took)) s (deadline \(deadline) s)")
        #expect(said.contains("Verify return code: 0 (ok)"), "the TLS handshake itself succeeded:\n\(said)")
        #expect(ended && took >= deadline - 0.5 && took <= deadline + 5, "closed at the deadline: \(took) s\n\(said)")
        let line = c.waitForCollectorLine(["peer=127.0.0.1:"], any: ["timed out", "HELLO"], timeout: 10)
        #expect(line != nil, "\(c.collectorLog.suffix(2000))")
        print("tls hello stall: \(line ?? "-")")
    }

    /// A collector that accepts and never answers the ClientHello: the agent gives up the
    /// handshake within its --io-timeout and says so.
    @Test func aStalledHandshake_isAbandonedByTheAgentWithinItsIOTimeout() throws {
        let c = try Cluster("tls-stall-agent")
        defer { c.remove() }
        let pki = try TestPKI(dir: c.root.appendingPathComponent("pki"))
        let (listener, port) = try Socket.listen(Endpoint(host: "127.0.0.1", port: 0))
        defer { listener.shutdown() }
        let ioTimeout = 2.0
        let spool = try c.spool()
        try Harness.writeRandomFile(spool.appendingPathComponent("x"), size: 1000, seed: 1)
        let agent = try c.startAgent(c.tlsAgentArgs(pki, spools: [("spool", spool)], target: port, extra: ["--io-timeout", "\(ioTimeout)"]))
        defer { agent.stop() }
        guard case .accepted(let s) = try listener.accept(timeout: 30) else { throw TestFailure("the agent did not connect: \(agent.output)") }
        defer { s.abort() }
        let t0 = Harness.monotonicNow()
        s.setTimeouts(receive: 30, send: 10)
        var first: [UInt8] = []
        var took = -1.0
        while true {
            guard let chunk = try? s.receive(max: 65536), !chunk.isEmpty else { took = Harness.monotonicNow() - t0; break }
            if first.isEmpty { first = chunk }
            if Harness.monotonicNow() - t0 > 30 { break }
        }
        print("tls stall: the agent gave up the handshake after \(String(format: "%.2f", took)) s (io timeout \(ioTimeout) s)")
        #expect(first.first == 0x16, "the agent opened a TLS handshake")
        #expect(took >= ioTimeout - 0.5 && took <= ioTimeout + 4, "within its io timeout: \(took) s")
        #expect(Harness.waitUntil(timeout: 10) { agent.output.contains("connection to collector failed") }, "\(agent.output)")
        let line = Cluster.line(in: agent.output, all: ["connection to collector failed", "TLS handshake with"], any: ["timed out"])
        #expect(line != nil, "the agent says its handshake timed out:\n\(agent.output)")
        print("tls stall: \(line ?? "-")")
        #expect(agent.isRunning, "it retries")
    }
}
