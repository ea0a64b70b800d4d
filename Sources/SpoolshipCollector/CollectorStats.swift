import CoreMetrics
import Foundation
import Glibc
import SpoolshipDaemon
import SpoolshipIO

/// The collector's figures since start. Per-connection figures live in `ConnectionStats`.
///
/// `@unchecked Sendable`: every connection's threads count into it and status reads it; its
/// `var`s (`s`, `errors`, `receiveRing`) are touched only under `lock`, and the rest are lets
/// (the metrics handles are thread-safe).
public final class CollectorStats: @unchecked Sendable {
    public enum ErrorKind: String, CaseIterable, Sendable, Codable {
        /// A peer was refused during the handshake (bad preamble, unknown agent, credentials).
        case handshake
        /// An agent broke the protocol after the handshake (bad frame, offset, tag).
        case `protocol`
        /// A connection was reset, or went silent past its deadline.
        case connection
        /// The data dir's file system was full (ENOSPC, EDQUOT) or an offer was refused for the
        /// free-space reserve.
        case noSpace = "no_space"
        /// An offer was deferred by the agent's partial limit.
        case partialLimit = "partial_limit"
        /// fdatasync, fsync or close of a partial failed: the partial was poisoned (R2).
        case sync
        /// A segment's checksum did not match the agent's.
        case checksum
        /// A commit failed otherwise (rename, directory sync).
        case commit
        /// The ledger could not be written or synced.
        case ledger
        /// A connection presented an agent id that another live connection holds (two agents
        /// with one id): refused.
        case agentIDInUse = "agent_id_in_use"
        /// Anything else that ended a connection.
        case `internal`
    }

    public struct Snapshot: Sendable {
        public var connectionsAccepted: UInt64 = 0
        public var receivedBytes: UInt64 = 0
        public var committedSegments: UInt64 = 0
        public var committedBytes: UInt64 = 0
        public var resumes: UInt64 = 0
        public var resumedBytes: UInt64 = 0
        public var fsyncs: UInt64 = 0
        public var fsyncSeconds: Double = 0
        public var errors: [ErrorKind: UInt64] = [:]
        /// Bytes received per second over the last 10 s.
        public var receiveRate: Double = 0
    }

    /// Which file an fdatasync was for (the metric's `file` label); `filesystem`: a syncfs of
    /// the data dir's file system for a commit batch (`commit-sync = filesystem`).
    public enum SyncedFile: String, CaseIterable, Sendable {
        case partial, ledger, filesystem
    }

    private let lock = NSLock()
    private var s = Snapshot()
    private var errors: ErrorCounts<ErrorKind>
    private var receiveRing = RateRing()
    let factory: any MetricsFactory
    private let mConnections: Counter
    private let mReceived: Counter
    private let mCommittedSegments: Counter
    private let mCommittedBytes: Counter
    private let mResumes: Counter
    private let mResumedBytes: Counter
    private let mFsync: [CoreMetrics.Timer]

    /// `factory` makes the metrics (swift-metrics' no-op one when there is no metrics listener).
    public init(factory: any MetricsFactory = NOOPMetricsHandler.instance) {
        self.factory = factory
        mConnections = Counter(label: "spoolship_collector_connections_total", factory: factory)
        mReceived = Counter(label: "spoolship_collector_received_bytes_total", factory: factory)
        mCommittedSegments = Counter(label: "spoolship_collector_committed_segments_total", factory: factory)
        mCommittedBytes = Counter(label: "spoolship_collector_committed_bytes_total", factory: factory)
        mResumes = Counter(label: "spoolship_collector_resumes_total", factory: factory)
        mResumedBytes = Counter(label: "spoolship_collector_resumed_bytes_total", factory: factory)
        errors = ErrorCounts(label: "spoolship_collector_errors_total", factory: factory)
        mFsync = SyncedFile.allCases.map { CoreMetrics.Timer(label: "spoolship_collector_fsync_seconds", dimensions: [("file", $0.rawValue)], factory: factory) }
    }

    func accepted() {
        lock.lock(); s.connectionsAccepted += 1; lock.unlock()
        mConnections.increment()
    }

    /// Segment bytes spliced into a partial file.
    func received(bytes: UInt64) {
        lock.lock()
        s.receivedBytes &+= bytes
        receiveRing.add(bytes, at: monotonicNow())
        lock.unlock()
        mReceived.increment(by: Int64(clamping: bytes))
    }

    /// Segments committed (renamed into place, directory and ledger synced) and acknowledged.
    func committed(segments: Int, bytes: UInt64) {
        lock.lock()
        s.committedSegments += UInt64(segments)
        s.committedBytes &+= bytes
        lock.unlock()
        mCommittedSegments.increment(by: Int64(segments))
        mCommittedBytes.increment(by: Int64(clamping: bytes))
    }

    /// An offer found `bytes` of its segment already here.
    func resumed(bytes: UInt64) {
        lock.lock()
        s.resumes += 1
        s.resumedBytes &+= bytes
        lock.unlock()
        mResumes.increment()
        mResumedBytes.increment(by: Int64(clamping: bytes))
    }

    /// One fdatasync took `seconds` (whether it succeeded or not).
    func fsync(_ file: SyncedFile, seconds: Double) {
        lock.lock()
        s.fsyncs += 1
        s.fsyncSeconds += seconds
        lock.unlock()
        mFsync[SyncedFile.allCases.firstIndex(of: file)!].recordSeconds(seconds)
    }

    func error(_ kind: ErrorKind?) {
        guard let kind = kind else { return }
        lock.lock()
        let metric = errors.count(kind)
        lock.unlock()
        metric.increment()
    }

    public func snapshot() -> Snapshot {
        lock.lock()
        defer { lock.unlock() }
        var out = s
        out.errors = errors.counts
        out.receiveRate = receiveRing.rate(at: monotonicNow())
        return out
    }
}

/// One collector connection's figures: written by its reader and durability threads, read by
/// the control socket's thread.
///
/// `@unchecked Sendable`: its one `var`, `s`, is touched only under `lock`.
final class ConnectionStats: @unchecked Sendable {
    struct Snapshot {
        var agentID: String?
        var address: String
        var since: Double
        var bytesIn: UInt64
        var segmentsCommitted: UInt64
        var bytesCommitted: UInt64
        var offersOpen: Int
        /// The connection's transport (`Link.transport`) and the path of what it receives.
        var transport = "plain TCP (sendfile, splice)"
        var path = Link.Path.tcp
    }

    private let lock = NSLock()
    private var s: Snapshot

    init(address: String) {
        s = Snapshot(agentID: nil, address: address, since: Date().timeIntervalSince1970, bytesIn: 0, segmentsCommitted: 0, bytesCommitted: 0, offersOpen: 0)
    }

    func identified(_ id: String) { lock.lock(); s.agentID = id; s.since = Date().timeIntervalSince1970; lock.unlock() }
    func received(bytes: UInt64) { lock.lock(); s.bytesIn &+= bytes; lock.unlock() }
    func committed(segments: Int, bytes: UInt64) {
        lock.lock(); s.segmentsCommitted += UInt64(segments); s.bytesCommitted &+= bytes; lock.unlock()
    }
    func offersOpen(_ n: Int) { lock.lock(); s.offersOpen = n; lock.unlock() }
    func secured(_ link: Link) {
        let (t, p) = (link.transport, link.path(sending: false))
        lock.lock(); s.transport = t; s.path = p; lock.unlock()
    }
    func snapshot() -> Snapshot { lock.lock(); defer { lock.unlock() }; return s }
}
