import Foundation
import Glibc
import Logging
import SpoolshipCore
import SpoolshipIO
import SpoolshipDaemon

public struct CollectorConfig: Sendable {
    public var listen: Endpoint
    public var dataDir: String
    public var collectorID: String = ProcessInfo.processInfo.hostName
    public var maxFrameBody: Int = Wire.defaultMaxFrameBody
    /// The largest segment accepted; larger offers are refused with `tooLarge`.
    public var maxSegmentSize: UInt64 = 1 << 40
    /// Offers an agent may have outstanding on one connection.
    public var window: UInt32 = 512
    /// A peer must complete its hello within this many seconds.
    public var handshakeTimeout: Double = 10
    /// A connection on which nothing arrives for this long is dropped (agents ping when idle).
    public var idleTimeout: Double = 60
    /// A durable checkpoint is taken every this many bytes of a segment, or
    public var checkpointBytes: Int64 = 64 << 20
    /// every this many seconds, whichever comes first.
    public var checkpointInterval: Double = 1
    public var maxConnections: Int = 4096
    public var portFile: String?
    /// Partials untouched for this long are removed at start (their agent never came back).
    public var partialMaxAge: Double = 7 * 86400
    /// A listening socket passed by the service manager (socket activation); `listen` is then
    /// only a label.
    public var inheritedListener: Int32?
    /// Free space on the data dir's file system that incoming segments may not use: an offer
    /// that would eat into it is refused with "no space" (the agent retries with backoff).
    public var freeSpaceReserve: UInt64 = 256 << 20
    /// What one agent's unfinished segments may take at the collector: the segments it has on
    /// offer (at their full size) and the partials it left behind. Past it, left-over partials
    /// are dropped oldest first, then offers are answered "retry later". 0: no limit.
    public var maxPartialBytes: UInt64 = 64 << 30
    /// The largest segment an agent may offer: the smaller of the two limits.
    public var largestSegment: UInt64 { maxPartialBytes == 0 ? maxSegmentSize : min(maxSegmentSize, maxPartialBytes) }
    /// The agents that may connect, with their secrets (`--agents FILE`); nil accepts any
    /// well-formed agent id without credentials.
    public var agents: [String: [UInt8]]?
    /// How a commit batch's data is made durable (`commit-sync`).
    public var commitSync: CommitSync = .filesystem
    /// TLS (`[tls]`, `--tls-*`); nil for plain TCP. Its files, read, are the collector's
    /// `tlsContext`.
    public var tls: TLSSettings?

    /// Segments up to this size are received into an unnamed partial (O_TMPFILE), which the
    /// commit links into place, where `commitSync` is `filesystem` (whose sync after the links
    /// makes their link counts durable too). A cut costs a resend of at most this much.
    public static let unnamedPartialLimit: UInt64 = 1 << 20

    public init(listen: Endpoint, dataDir: String) {
        self.listen = listen
        self.dataDir = dataDir
    }
}

/// How the collector makes the data of a commit batch durable before it renames the files into
/// place (`commit-sync`; docs/OPERATIONS.md, "Commit sync").
public enum CommitSync: String, Sendable, CaseIterable {
    /// One syncfs of the data dir's file system for a batch of more than one file, shared
    /// with the other connections' batches (needs Linux 5.8 for its errors; before, `file`).
    case filesystem
    /// Each file's own fdatasync: for a data dir on a file system that other programs fill
    /// with writes of their own, which a syncfs would have to wait for.
    case file
}

/// The collector: accepts agents, splices their segments into partial files, commits them
/// durably and acknowledges. One thread accepts; each connection (`CollectorConnection`) has a
/// reader thread (frames and splice) and a durability thread (`Durability`: fdatasync,
/// checksum, commit rename, ledger, acks).
public final class Collector: Sendable {
    private let configBox: Locked<CollectorConfig>
    /// The current settings; a reload changes the limits for the connections that follow.
    public var config: CollectorConfig { configBox.withLock { $0 } }
    /// The TLS files as read last (at the start, or a reload), with the settings they were
    /// read for: what each new connection takes. nil without TLS.
    private let tlsBox: Locked<(TLSSettings, TLSContext)?>
    var tls: (settings: TLSSettings, context: TLSContext)? { tlsBox.withLock { $0 } }
    let logger: Logger
    let dataDir: DataDir
    let listener: Socket
    public let port: UInt16
    private let connections = Locked<[ObjectIdentifier: CollectorConnection]>([:])
    private let stopping = Latch()
    var heartbeats: Heartbeats { Heartbeats.shared }
    /// The figures since start: status and metrics read them.
    public let stats: CollectorStats
    /// When the collector started (wall clock).
    let startedAt = Date().timeIntervalSince1970

    /// `tls`: `config.tls`'s files, read (`CollectorSettings.tlsContext`).
    public init(config: CollectorConfig, tls: TLSContext? = nil, logger: Logger, stats: CollectorStats = CollectorStats()) throws {
        guard (config.tls == nil) == (tls == nil) else { throw DaemonError("TLS settings without their files read, or the reverse") }
        configBox = Locked(config)
        tlsBox = Locked(config.tls.flatMap { s in tls.map { (s, $0) } })
        self.logger = logger
        self.stats = stats
        // Each connection holds a socket, a pipe and its open partials: allow what the hard
        // limit allows.
        Processes.raiseDescriptorLimit()
        dataDir = try DataDir(path: config.dataDir)
        _ = dataDir.removeStalePartials(maxAge: config.partialMaxAge, logger: logger)
        if let fd = config.inheritedListener {
            let owned = OwnedFD(fd, label: "socket from systemd")
            listener = Socket(fd: owned, peer: "socket from systemd")
            port = try Socket.boundPort(owned)
        } else {
            (listener, port) = try Socket.listen(config.listen)
        }
        if let pf = config.portFile {
            let url = URL(fileURLWithPath: pf)
            try Files.replaceDurably(dir: url.deletingLastPathComponent().path, name: url.lastPathComponent, bytes: Array("\(port)\n".utf8))
        }
    }

    public var isStopping: Bool { stopping.isOpen }

    /// The open connections (handshakes under way included).
    func connectionList() -> [CollectorConnection] { connections.withLock { Array($0.values) } }

    /// Accepts connections until `stop()`; returns once every connection has ended.
    public func run() {
        logger.info("listening", metadata: ["address": "\(address)", "data_dir": "\(config.dataDir)"])
        if config.commitSync == .filesystem && !Files.syncfsReportsErrors {
            logger.notice("commit-sync = filesystem needs Linux 5.8 or later (its syncfs reports write errors); each file is synced on its own")
        }
        let tls = self.tls
        if let a = config.agents {
            logger.info("agents must authenticate", metadata: ["agents": "\(a.count)"])
        } else if tls != nil {
            logger.info("agents are known by their TLS certificates: each agent id must be in its certificate's subjectAltName")
        } else {
            logger.warning("no authentication: any peer that sends a well-formed agent id may write under that id (give --agents FILE, or TLS with client certificates, to require credentials)")
        }
        if let (s, context) = tls {
            var meta: Logger.Metadata = ["certificate": "\(context.certificateSummary)", "ktls": "\(s.kernelTLS.rawValue)", "min_version": "\(s.minVersion.rawValue)"]
            if s.kernelTLS != .off, let why = KernelTLS.unavailableReason() { meta["kernel_tls"] = "\(why)" }
            logger.info("TLS on: agents must present a certificate from the CA", metadata: meta)
        } else {
            logger.warning("TLS off: segments cross the network in plain text (give tls.ca-file, tls.cert-file and tls.key-file to encrypt them)")
        }
        heartbeats.beat("accept")
        if !stopping.isOpen { Systemd.ready(status: statusLine) }
        while !stopping.isOpen {
            heartbeats.beat("accept")
            let sock: Socket?
            do {
                switch try listener.accept(timeout: 1) {
                case .accepted(let s): sock = s
                case .timedOut: continue
                case .shutDown: sock = nil
                }
            } catch {
                if stopping.isOpen { break }
                // EMFILE and friends: say so, then give descriptors a moment to come back.
                logger.error("accept failed", metadata: ["error": "\(error)"])
                _ = stopping.wait(timeout: 0.1)
                continue
            }
            guard let s = sock else { break }
            if stopping.isOpen { s.abort(); break }
            let count = connections.withLock { $0.count }
            if count >= config.maxConnections {
                logger.warning("too many connections; refusing", metadata: ["peer": "\(s.peer)", "limit": "\(config.maxConnections)"])
                s.abort()
                continue
            }
            stats.accepted()
            let c = CollectorConnection(socket: s, collector: self)
            connections.withLock { $0[ObjectIdentifier(c)] = c }
            startThread("conn \(s.peer)") { [self] in
                c.run()
                connections.withLock { $0[ObjectIdentifier(c)] = nil }
            }
        }
        // Graceful stop: every connection is told and closed; what is durable stays.
        let live = connections.withLock { Array($0.values) }
        for c in live { c.kill() }
        let deadline = monotonicNow() + 30
        while connections.withLock({ !$0.isEmpty }) && monotonicNow() < deadline {
            usleep(20_000)  // connections end on their own threads; poll for the last one
        }
        logger.info("stopped")
    }

    /// Takes the limits and timeouts of a reloaded configuration, and its TLS files (read
    /// again: `tls`), for the connections that follow. The address and the data dir take
    /// effect only at a restart; they are kept, as is turning TLS on or off.
    public func reload(_ next: CollectorConfig, tls: TLSContext?) -> [String] {
        configBox.withLock { c in
            var ignored: [String] = []
            if next.listen != c.listen && c.inheritedListener == nil { ignored.append("listen") }
            if next.dataDir != c.dataDir { ignored.append("data-dir") }
            if next.portFile != c.portFile { ignored.append("port-file") }
            c.maxSegmentSize = next.maxSegmentSize
            c.handshakeTimeout = next.handshakeTimeout
            c.idleTimeout = next.idleTimeout
            c.checkpointBytes = next.checkpointBytes
            c.maxConnections = next.maxConnections
            c.freeSpaceReserve = next.freeSpaceReserve
            c.maxPartialBytes = next.maxPartialBytes
            c.maxFrameBody = next.maxFrameBody
            if (next.agents == nil) != (c.agents == nil) { ignored.append("agents (turning authentication on or off)") } else { c.agents = next.agents }
            if (next.tls == nil) != (c.tls == nil) {
                ignored.append("tls (turning TLS on or off)")
            } else if let s = next.tls, let context = tls {
                c.tls = s
                tlsBox.withLock { $0 = (s, context) }
                logger.notice("TLS certificate and key read again; new connections use them", metadata: ["certificate": "\(context.certificateSummary)"])
            }
            // partial-max-age is used at start only: the next start takes it.
            return ignored
        }
    }

    /// After a reload: an agent removed from the agents file loses the connection it has (it
    /// would be refused at its next handshake anyway). A changed secret does not close it, so
    /// that a secret can be changed on the collector first and on the agent next.
    public func closeRevokedConnections() {
        guard let agents = config.agents else { return }
        for c in connections.withLock({ Array($0.values) }) { c.closeIfRevoked(agents) }
    }

    /// Where it listens, for the log and the status line.
    var address: String {
        config.inheritedListener != nil ? "socket from systemd, port \(port)" : Endpoint(host: config.listen.host, port: port).description
    }

    /// The one-line summary for the service manager's STATUS=.
    public var statusLine: String {
        let agents = connections.withLock { $0.count }
        let t = stats.snapshot()
        if stopping.isOpen { return "stopping; \(agents) connection(s) finishing" }
        return "listening on \(address); \(agents) connection(s); \(t.committedSegments) segment(s), \(t.committedBytes) bytes committed since start"
    }

    public func stop() {
        Systemd.notify("STOPPING=1")
        stopping.open()
        // A socket from systemd stays systemd's: shutting it down would take it out of the
        // listening state for the socket unit too. The accept loop sees `stopping` within 1 s.
        if config.inheritedListener == nil { listener.shutdown() }
    }
}
