import CoreMetrics
import Foundation
import Glibc
import Logging
import Prometheus
import SpoolshipIO

/// The swift-metrics factory of a daemon with `--metrics-listen`: every metric goes to one
/// swift-prometheus registry, with its help text (docs/OPERATIONS.md lists them).
public final class SpoolshipMetricsFactory: MetricsFactory, Sendable {
    public let registry = PrometheusCollectorRegistry()

    public init() {}

    /// The help line of each metric, by name.
    public static let help: [String: String] = [
        "spoolship_agent_shipped_segments_total": "Segments the collector acknowledged as committed, since the agent started.",
        "spoolship_agent_shipped_bytes_total": "Bytes of the segments the collector acknowledged as committed, since the agent started.",
        "spoolship_agent_sent_bytes_total": "Segment bytes sent to the collector with sendfile (resends included).",
        "spoolship_agent_reconnects_total": "Connections to the collector set up after the first one.",
        "spoolship_agent_resumes_total": "Segments the collector asked to resume from a byte past zero.",
        "spoolship_agent_resumed_bytes_total": "Bytes that resumes did not send again.",
        "spoolship_agent_errors_total": "Errors, by kind.",
        "spoolship_agent_pending_segments": "Sealed segments not yet acknowledged by the collector.",
        "spoolship_agent_pending_bytes": "Bytes of the sealed segments not yet acknowledged.",
        "spoolship_agent_oldest_pending_age_seconds": "Seconds the oldest segment not yet acknowledged has waited since it was sealed; 0 when none.",
        "spoolship_agent_rotated_files_to_seal": "Log files rotated aside and not sealed yet.",
        "spoolship_agent_connected": "1 while a connection to the collector is set up, else 0.",
        "spoolship_agent_connection_path": "1 for the path the payload takes on the connection (tcp: plain, zero-copy; ktls: TLS encrypted by the kernel; tls: TLS in user space), 0 for the others.",
        "spoolship_collector_connected_agents_by_path": "Agents connected, by the path their payload takes (tcp: plain, spliced; ktls: TLS decrypted by the kernel, spliced; tls: TLS in user space).",
        "spoolship_collector_connections_total": "Connections accepted.",
        "spoolship_collector_received_bytes_total": "Segment bytes spliced into partial files.",
        "spoolship_collector_committed_segments_total": "Segments committed (renamed into place, synced, in the ledger) and acknowledged.",
        "spoolship_collector_committed_bytes_total": "Bytes of the committed segments.",
        "spoolship_collector_resumes_total": "Offers that found part of their segment already here.",
        "spoolship_collector_resumed_bytes_total": "Bytes that resumed offers found already here.",
        "spoolship_collector_errors_total": "Errors, by kind.",
        "spoolship_collector_fsync_seconds": "Time of each fdatasync, of partial files (checkpoints and commits) and of ledgers, and of each syncfs of the data dir's file system for commit batches (file=\"filesystem\").",
        "spoolship_collector_connected_agents": "Agents connected (handshake done).",
        "spoolship_collector_partials": "Partial files of every agent (in transfer or left by a cut).",
        "spoolship_collector_partial_bytes": "Bytes in the partial files.",
        "spoolship_collector_free_bytes": "Free bytes on the data dir's file system.",
        "spoolship_collector_free_space_reserve_bytes": "Free space that segments may not use (free-space-reserve).",
    ]

    /// fdatasync takes from well under a millisecond (a cache) to seconds (a busy disk).
    public static let fsyncBuckets: [Duration] = [
        .microseconds(100), .microseconds(250), .microseconds(500), .milliseconds(1), .microseconds(2500), .milliseconds(5),
        .milliseconds(10), .milliseconds(25), .milliseconds(50), .milliseconds(100), .milliseconds(250), .milliseconds(500),
        .seconds(1), .microseconds(2_500_000), .seconds(5), .seconds(10),
    ]

    private func descriptor(_ label: String) -> MetricNameDescriptor {
        MetricNameDescriptor(metricName: label, unitName: "", helpText: Self.help[label] ?? "")
    }

    public func makeCounter(label: String, dimensions: [(String, String)]) -> any CounterHandler {
        registry.makeCounter(descriptor: descriptor(label), labels: dimensions)
    }

    public func makeFloatingPointCounter(label: String, dimensions: [(String, String)]) -> any FloatingPointCounterHandler {
        registry.makeCounter(descriptor: descriptor(label), labels: dimensions)
    }

    public func makeRecorder(label: String, dimensions: [(String, String)], aggregate: Bool) -> any RecorderHandler {
        if aggregate {
            return registry.makeValueHistogram(descriptor: descriptor(label), labels: dimensions, buckets: [0.001, 0.01, 0.1, 1, 10, 100])
        }
        return registry.makeGauge(descriptor: descriptor(label), labels: dimensions)
    }

    public func makeMeter(label: String, dimensions: [(String, String)]) -> any MeterHandler {
        registry.makeGauge(descriptor: descriptor(label), labels: dimensions)
    }

    public func makeTimer(label: String, dimensions: [(String, String)]) -> any TimerHandler {
        registry.makeDurationHistogram(descriptor: descriptor(label), labels: dimensions, buckets: Self.fsyncBuckets)
    }

    // Metrics live as long as the daemon.
    public func destroyCounter(_ handler: any CounterHandler) {}
    public func destroyFloatingPointCounter(_ handler: any FloatingPointCounterHandler) {}
    public func destroyRecorder(_ handler: any RecorderHandler) {}
    public func destroyMeter(_ handler: any MeterHandler) {}
    public func destroyTimer(_ handler: any TimerHandler) {}
}

/// `--metrics-listen`: a small HTTP/1.1 responder for Prometheus, written by hand on threads of
/// its own. `GET /metrics` answers the registry in the text format 0.0.4; `GET /healthz` 200
/// "ok" while the daemon's loops turn, 503 and the reason otherwise. One request a connection;
/// the request head must arrive within 5 s and fit in 8 KiB; at most 4 requests are served at
/// once (more get 503; a connection whose answer is out only drains, for up to 1 s, outside
/// that count). Anything else gets 400, 404, 405, 408 or 431, and the daemon goes on.
public final class MetricsServer: Sendable {
    public let port: UInt16
    private let listen: Endpoint
    private let listener: Socket
    private let logger: Logger
    private let render: @Sendable () -> [UInt8]
    private let health: @Sendable () -> String?
    private let stopping = Latch()
    private let active = Locked(0)

    public static let maxHead = 8 << 10
    public static let headDeadline = 5.0
    public static let sendDeadline = 10.0
    public static let maxActive = 4

    /// `render` gives the exposition; `health` nil when healthy, else why not.
    public init(listen: Endpoint, portFile: String?, logger: Logger,
                render: @escaping @Sendable () -> [UInt8], health: @escaping @Sendable () -> String?) throws {
        (listener, port) = try Socket.listen(listen, backlog: 64)
        self.listen = listen
        self.logger = logger
        self.render = render
        self.health = health
        if let pf = portFile {
            let url = URL(fileURLWithPath: pf)
            try Files.replaceDurably(dir: url.deletingLastPathComponent().path, name: url.lastPathComponent, bytes: Array("\(port)\n".utf8))
        }
    }

    public func start() {
        startThread("metrics") { [self] in
            logger.info("metrics listening", metadata: ["address": "\(Endpoint(host: listen.host, port: port))"])
            listener.acceptClients(until: stopping, logger: logger, name: "metrics") { client in
                let admitted = active.withLock { n -> Bool in
                    guard n < Self.maxActive else { return false }
                    n += 1
                    return true
                }
                guard admitted else {
                    client.setTimeouts(receive: 1, send: 1)
                    try? client.sendAll(Self.response(503, "Service Unavailable", body: Array("busy\n".utf8)))
                    client.lingeringClose(timeout: 0.2)
                    return
                }
                startThread("metrics \(client.peer)", stackSize: 256 << 10) { [self] in
                    serve(client)
                    // The slot is free once the answer is out: the lingering close that
                    // follows (at most 1 s and 64 KiB) serves no one, and must not turn the
                    // next client away as busy.
                    active.withLock { $0 -= 1 }
                    client.lingeringClose(timeout: 1, maxBytes: 1 << 16)
                }
            }
        }
    }

    public func stop() {
        stopping.open()
        listener.shutdown()
    }

    public static func response(_ code: Int, _ reason: String, contentType: String = "text/plain; charset=utf-8", body: [UInt8], head: Bool = false, extra: String = "") -> [UInt8] {
        let h = "HTTP/1.1 \(code) \(reason)\r\nContent-Type: \(contentType)\r\nContent-Length: \(body.count)\r\n\(extra)Connection: close\r\n\r\n"
        return Array(h.utf8) + (head ? [] : body)
    }

    /// Where the blank line ends the head (CRLF CRLF, or LF LF from lax clients).
    public static func endOfHead(_ b: [UInt8]) -> Int? {
        guard b.count >= 2 else { return nil }
        for i in 1..<b.count where b[i] == 10 {
            if b[i - 1] == 10 { return i + 1 }
            if i >= 3 && b[i - 1] == 13 && b[i - 2] == 10 && b[i - 3] == 13 { return i + 1 }
        }
        return nil
    }

    /// Answers one request (the caller closes the connection).
    private func serve(_ client: Socket) {
        let answer: [UInt8]
        // The head of the request, up to its blank line.
        switch client.receiveRequest(until: Self.endOfHead, max: Self.maxHead, readLimit: Self.maxHead + 4,
                                     within: Self.headDeadline, sendTimeout: Self.sendDeadline) {
        case .closed: return
        case .timedOut: answer = Self.response(408, "Request Timeout", body: Array("no complete request head within \(Int(Self.headDeadline)) s\n".utf8))
        case .tooLarge: answer = Self.response(431, "Request Header Fields Too Large", body: Array("the request head is larger than \(Self.maxHead) bytes\n".utf8))
        case .complete(let h): answer = respond(to: h)
        }
        client.setTimeouts(receive: 1, send: Self.sendDeadline)
        do { try client.sendAll(answer) } catch {
            logger.debug("metrics: client did not take the answer", metadata: ["error": "\(error)"])
        }
    }

    public func respond(to head: [UInt8]) -> [UInt8] {
        // The request line, up to its LF (bytes: in a Swift String, CR LF is one Character).
        let firstLine = head.prefix { $0 != 10 }
        let requestLine = String(decoding: firstLine, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        let parts = requestLine.split(separator: " ", omittingEmptySubsequences: false)
        guard parts.count == 3, parts[2].hasPrefix("HTTP/1."), parts[1].hasPrefix("/"), !parts[0].isEmpty,
              parts[0].allSatisfy({ $0.isASCII && $0.isUppercase }) else {
            return Self.response(400, "Bad Request", body: Array("not an HTTP/1.x request line\n".utf8))
        }
        let method = parts[0]
        let path = parts[1].split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false).first.map(String.init) ?? ""
        guard path == "/metrics" || path == "/healthz" else {
            return Self.response(404, "Not Found", body: Array("try /metrics or /healthz\n".utf8))
        }
        guard method == "GET" || method == "HEAD" else {
            return Self.response(405, "Method Not Allowed", body: Array("only GET and HEAD\n".utf8), extra: "Allow: GET, HEAD\r\n")
        }
        let isHead = method == "HEAD"
        if path == "/healthz" {
            if let why = health() {
                return Self.response(503, "Service Unavailable", body: Array("\(why)\n".utf8), head: isHead)
            }
            return Self.response(200, "OK", body: Array("ok\n".utf8), head: isHead)
        }
        return Self.response(200, "OK", contentType: "text/plain; version=0.0.4; charset=utf-8", body: render(), head: isHead)
    }
}

extension Heartbeats {
    /// nil while every loop made progress within `limit` seconds; else which did not.
    public func unhealthy(limit: Double) -> String? {
        let s = stale(limit: limit)
        guard !s.isEmpty else { return nil }
        return "no progress: " + s.map { "\($0.0) for \(Int($0.1)) s" }.joined(separator: ", ")
    }
}
