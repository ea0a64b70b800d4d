import Foundation
import Glibc
import Testing

/// `--metrics-listen` on both daemons: a real Prometheus text parser (prometheus_client's,
/// from Debian's python3-prometheus-client) reads /metrics, and the counters are what was
/// shipped, on both sides, and agree with `spoolship status`; /healthz answers; garbage
/// requests get an HTTP error and the daemon goes on.
@Suite(.serialized) struct MetricsTests {
    /// Scrapes URL and prints every sample as JSON: {"samples": {"name{k=\"v\"}": value}, "types": {family: type}}.
    static let scraper = """
    import json, sys, urllib.request
    from prometheus_client.parser import text_string_to_metric_families
    with urllib.request.urlopen(sys.argv[1], timeout=10) as r:
        assert r.status == 200, r.status
        ctype = r.headers.get("Content-Type")
        text = r.read().decode("utf-8")
    samples, types = {}, {}
    for fam in text_string_to_metric_families(text):
        types[fam.name] = fam.type
        for s in fam.samples:
            labels = ",".join('%s="%s"' % (k, v) for k, v in sorted(s.labels.items()))
            samples[s.name + ("{" + labels + "}" if labels else "")] = s.value
    print(json.dumps({"samples": samples, "types": types, "content_type": ctype}))
    """

    struct Scrape {
        var samples: [String: Double]
        var types: [String: String]
        var contentType: String
        func value(_ key: String) -> Double? { samples[key] }
    }

    static func scrape(_ c: Cluster, port: UInt16) throws -> Scrape {
        let script = c.root.appendingPathComponent("scrape.py")
        if !FileManager.default.fileExists(atPath: script.path) {
            try scraper.write(to: script, atomically: true, encoding: .utf8)
        }
        // Debian's python3, where python3-prometheus-client lives (another python3 may come
        // first on the PATH).
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        p.arguments = [script.path, "http://127.0.0.1:\(port)/metrics"]
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        try p.run()
        let o = out.fileHandleForReading.readDataToEndOfFile()
        let e = err.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        guard p.terminationStatus == 0 else {
            throw TestFailure("the scraper failed (\(p.terminationStatus)): \(String(decoding: e, as: UTF8.self))")
        }
        guard let doc = try JSONSerialization.jsonObject(with: o) as? [String: Any],
              let samples = doc["samples"] as? [String: Any], let types = doc["types"] as? [String: String] else {
            throw TestFailure("scraper output: \(String(decoding: o, as: UTF8.self))")
        }
        return Scrape(samples: samples.compactMapValues { ($0 as? NSNumber)?.doubleValue }, types: types,
                      contentType: doc["content_type"] as? String ?? "")
    }

    /// One raw HTTP exchange with 127.0.0.1:port: sends `request` (as is), returns all that
    /// comes back before the server closes (or `timeout`).
    static func http(port: UInt16, _ request: [UInt8], timeout: Double = 15) throws -> String {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue | SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw Harness.Failure.errno("socket", "127.0.0.1:\(port)") }
        defer { close(fd) }
        var a = sockaddr_in()
        a.sin_family = sa_family_t(AF_INET)
        a.sin_port = port.bigEndian
        a.sin_addr.s_addr = inet_addr("127.0.0.1")
        let rc = withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard rc == 0 else { throw Harness.Failure.errno("connect", "127.0.0.1:\(port)") }
        var sent = 0
        while sent < request.count {
            let n = request.withUnsafeBytes { send(fd, $0.baseAddress! + sent, request.count - sent, Int32(MSG_NOSIGNAL)) }
            if n <= 0 { break }  // the server may answer and close before taking it all
            sent += n
        }
        var out: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 65536)
        let deadline = Harness.monotonicNow() + timeout
        while Harness.monotonicNow() < deadline {
            var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            if poll(&pfd, 1, 100) <= 0 { continue }
            let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress!, 65536, 0) }
            if n <= 0 { break }
            out += buf[0..<n]
        }
        return String(decoding: out, as: UTF8.self)
    }

    static func get(_ port: UInt16, _ path: String, method: String = "GET") throws -> String {
        try http(port: port, Array("\(method) \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".utf8))
    }

    @Test func countersAgreeWithWhatWasShipped_onBothSides_andWithStatus() throws {
        let c = try Cluster("metrics-flow")
        defer { c.remove() }
        let cPortFile = c.root.appendingPathComponent("collector-metrics.port")
        try c.startCollector(extra: ["--metrics-listen", "127.0.0.1:0", "--metrics-port-file", cPortFile.path])
        let spool = try c.spool()
        let aPortFile = c.root.appendingPathComponent("agent-metrics.port")
        let agent = try c.startAgent(c.agentArgs(spools: [("spool", spool)], extra: ["--metrics-listen", "127.0.0.1:0", "--metrics-port-file", aPortFile.path]))
        defer { agent.stop() }
        let cPort = try #require(Harness.readPortFile(cPortFile, timeout: 30), "\(c.collector!.output)")
        let aPort = try #require(Harness.readPortFile(aPortFile, timeout: 30), "\(agent.output)")
        var p = try c.payload()
        let sizes = [0, 1, 4096, 100_000, 3 << 20]
        for (i, size) in sizes.enumerated() { try p.add("m\(i).bin", size: size, seed: UInt64(300 + i), into: spool) }
        let total = Double(sizes.reduce(0, +))
        let shipped = try Harness.waitUntil(timeout: 60) { try Harness.files(in: spool).isEmpty && p.identical(in: c.committed()).count == sizes.count }
        #expect(shipped, "\(agent.output)")

        // The agent's acknowledgements are counted when they arrive: poll until the scrape
        // shows them all, then every figure must match.
        var a = try Self.scrape(c, port: aPort)
        _ = try Harness.waitUntil(timeout: 30) {
            a = try Self.scrape(c, port: aPort)
            return a.value(#"spoolship_agent_shipped_segments_total{spool="spool"}"#) == Double(sizes.count)
        }
        #expect(a.contentType == "text/plain; version=0.0.4; charset=utf-8")
        #expect(a.value(#"spoolship_agent_shipped_segments_total{spool="spool"}"#) == Double(sizes.count), "\(a.samples)")
        #expect(a.value(#"spoolship_agent_shipped_bytes_total{spool="spool"}"#) == total)
        #expect((a.value("spoolship_agent_sent_bytes_total") ?? 0) >= total)
        #expect(a.value(#"spoolship_agent_pending_segments{spool="spool"}"#) == 0)
        #expect(a.value(#"spoolship_agent_pending_bytes{spool="spool"}"#) == 0)
        #expect(a.value(#"spoolship_agent_oldest_pending_age_seconds{spool="spool"}"#) == 0)
        #expect(a.value(#"spoolship_agent_unshippable_files{spool="spool"}"#) == 0)
        #expect(a.value("spoolship_agent_connected") == 1)
        #expect(a.value("spoolship_agent_reconnects_total") == 0)
        #expect(a.value("spoolship_agent_resumes_total") == 0)
        for kind in ["connect", "connection", "refused", "segment", "checksum", "deferred", "seal", "remove", "unshippable"] {
            #expect(a.value("spoolship_agent_errors_total{kind=\"\(kind)\"}") == 0, "errors of kind \(kind)")
        }
        #expect(a.types["spoolship_agent_shipped_segments"] == "counter")
        #expect(a.types["spoolship_agent_pending_bytes"] == "gauge")

        let m = try Self.scrape(c, port: cPort)
        #expect(m.value("spoolship_collector_committed_segments_total") == Double(sizes.count), "\(m.samples)")
        #expect(m.value("spoolship_collector_committed_bytes_total") == total)
        #expect(m.value("spoolship_collector_received_bytes_total") == total)
        #expect(m.value("spoolship_collector_connections_total") == 1)
        #expect(m.value("spoolship_collector_connected_agents") == 1)
        #expect(m.value("spoolship_collector_partials") == 0)
        #expect(m.value("spoolship_collector_free_space_reserve_bytes") == Double(256 << 20))
        #expect((m.value("spoolship_collector_free_bytes") ?? 0) > 0)
        #expect(m.types["spoolship_collector_fsync_seconds"] == "histogram")
        for file in ["partial", "ledger"] {
            let count = m.value("spoolship_collector_fsync_seconds_count{file=\"\(file)\"}") ?? 0
            #expect(count >= 1, "fdatasyncs of \(file) files observed")
            #expect(m.value("spoolship_collector_fsync_seconds_bucket{file=\"\(file)\",le=\"+Inf\"}") == count)
            #expect((m.value("spoolship_collector_fsync_seconds_sum{file=\"\(file)\"}") ?? -1) >= 0)
        }
        #expect(m.samples.keys.filter { $0.hasPrefix("spoolship_collector_errors_total{") }.count == 11, "every kind present, at 0")
        #expect(m.samples.filter { $0.key.hasPrefix("spoolship_collector_errors_total{") }.values.reduce(0, +) == 0)

        // The same figures as spoolship status: both read the same counters.
        #expect(StatusTests.waitForListener(c.agentSocket().path) && StatusTests.waitForListener(c.collectorSocket.path))
        let agentStatus = try StatusTests.json(c.agentSocket())
        #expect(StatusTests.int(agentStatus, "totals.shipped_bytes").map(Double.init) == a.value(#"spoolship_agent_shipped_bytes_total{spool="spool"}"#))
        #expect(StatusTests.int(agentStatus, "totals.sent_bytes").map(Double.init) == a.value("spoolship_agent_sent_bytes_total"))
        let collectorStatus = try StatusTests.json(c.collectorSocket)
        #expect(StatusTests.int(collectorStatus, "totals.committed_bytes").map(Double.init) == m.value("spoolship_collector_committed_bytes_total"))
        #expect(StatusTests.int(collectorStatus, "totals.fsyncs").map(Double.init)
                == ["partial", "ledger", "filesystem"].reduce(0.0) { $0 + (m.value(#"spoolship_collector_fsync_seconds_count{file="\#($1)"}"#) ?? 0) })

        // /healthz on both.
        for port in [aPort, cPort] {
            let h = try Self.get(port, "/healthz")
            #expect(h.hasPrefix("HTTP/1.1 200 OK\r\n"), "\(h)")
            #expect(h.hasSuffix("\r\n\r\nok\n"), "\(h)")
        }
    }

    @Test func garbageRequests_getAnHTTPError_andTheDaemonGoesOn() throws {
        let c = try Cluster("metrics-garbage")
        defer { c.remove() }
        let portFile = c.root.appendingPathComponent("metrics.port")
        try c.startCollector(extra: ["--metrics-listen", "127.0.0.1:0", "--metrics-port-file", portFile.path])
        let port = try #require(Harness.readPortFile(portFile, timeout: 30))
        // A client that sends half a request head and stops; it is answered 408 once the head
        // deadline has passed, and meanwhile others are served.
        let stalled = Thread { _ = try? Self.http(port: port, Array("GET /metr".utf8), timeout: 20) }
        stalled.start()
        #expect(try Self.http(port: port, [0, 1, 2, 255, 13, 10, 13, 10]).hasPrefix("HTTP/1.1 400 Bad Request\r\n"))
        #expect(try Self.http(port: port, Array("hello\r\n\r\n".utf8)).hasPrefix("HTTP/1.1 400 Bad Request\r\n"))
        let huge = "GET /metrics HTTP/1.1\r\n" + String(repeating: "X-Filler: \(String(repeating: "a", count: 100))\r\n", count: 100) + "\r\n"
        #expect(try Self.http(port: port, Array(huge.utf8)).hasPrefix("HTTP/1.1 431 Request Header Fields Too Large\r\n"))
        let post = try Self.get(port, "/metrics", method: "POST")
        #expect(post.hasPrefix("HTTP/1.1 405 Method Not Allowed\r\n") && post.contains("Allow: GET, HEAD\r\n"), "\(post)")
        #expect(try Self.get(port, "/../../etc/passwd").hasPrefix("HTTP/1.1 404 Not Found\r\n"))
        #expect(try Self.get(port, "/").hasPrefix("HTTP/1.1 404 Not Found\r\n"))
        let half = try Self.http(port: port, Array("GET /metrics HTTP/1.1\r\n".utf8), timeout: 20)
        #expect(half.hasPrefix("HTTP/1.1 408 Request Timeout\r\n"), "\(half)")
        let head = try Self.get(port, "/metrics", method: "HEAD")
        #expect(head.hasPrefix("HTTP/1.1 200 OK\r\n") && head.hasSuffix("\r\n\r\n"), "HEAD: headers only:\n\(head)")
        // Still serving, still alive.
        let ok = try Self.get(port, "/metrics")
        #expect(ok.hasPrefix("HTTP/1.1 200 OK\r\n") && ok.contains("spoolship_collector_committed_segments_total 0"), "\(ok)")
        #expect(try Self.get(port, "/healthz?verbose=1").hasPrefix("HTTP/1.1 200 OK\r\n"))
        #expect(c.collector!.isRunning)
        // A bad address is a clear error at start.
        let bad = try Daemon("spoolship-collector", ["--config", c.emptyConfig.path, "--listen", "127.0.0.1:0", "--data-dir", c.root.appendingPathComponent("d2").path,
                                                     "--control-socket", "none", "--metrics-listen", "nowhere"], log: c.nextLog("bad"))
        #expect(bad.wait(timeout: 30) != 0)
        #expect(bad.output.contains("--metrics-listen must be HOST:PORT, got 'nowhere'"), "\(bad.output)")
    }
}
