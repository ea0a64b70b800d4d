import CoreMetrics
import Foundation
import Glibc

// The figures of a running daemon, one method per observable event (as vector's
// internal_events.rs lists them). `spoolship status` reads snapshots of them beside the
// daemon's live state; the Prometheus metrics count the same events in the same methods, so
// the two cannot disagree. Events come from the data-path threads: each method takes one
// lock, adds to fixed fields and returns; no allocation (the per-spool and per-kind slots
// exist before the first event), no logging.

/// Bytes per second over the last `window` whole seconds, from a ring of per-second sums.
struct RateRing {
    static let slots = 16
    private var sums = [UInt64](repeating: 0, count: RateRing.slots)
    private var seconds = [Int](repeating: -1, count: RateRing.slots)

    mutating func add(_ n: UInt64, at now: Double) {
        let s = Int(now)
        let i = s % Self.slots
        if seconds[i] != s { seconds[i] = s; sums[i] = 0 }
        sums[i] &+= n
    }

    /// The mean rate over the `window` seconds before the current one (which is not over yet).
    func rate(window: Int = 10, at now: Double) -> Double {
        let s = Int(now)
        var total: UInt64 = 0
        for back in 1...min(window, Self.slots - 1) {
            let t = s - back
            guard t >= 0 else { break }
            let i = t % Self.slots
            if seconds[i] == t { total &+= sums[i] }
        }
        return Double(total) / Double(window)
    }
}

/// Errors counted by kind, each with its counter `LABEL{kind="..."}`; a slot for every kind
/// from the start. Used under its owner's lock; the returned counter is incremented after it.
struct ErrorCounts<Kind: CaseIterable & Hashable & RawRepresentable> where Kind.RawValue == String {
    private(set) var counts: [Kind: UInt64]
    private let metrics: [Kind: Counter]

    init(label: String, factory: any MetricsFactory) {
        counts = Dictionary(uniqueKeysWithValues: Kind.allCases.map { ($0, 0) })
        metrics = Dictionary(uniqueKeysWithValues: Kind.allCases.map {
            ($0, Counter(label: label, dimensions: [("kind", $0.rawValue)], factory: factory))
        })
    }

    /// Counts one error of `kind`; returns its metric, to be incremented outside the lock.
    mutating func count(_ kind: Kind) -> Counter {
        counts[kind, default: 0] += 1
        return metrics[kind]!
    }
}

/// The agent's figures since the process started (a reload keeps them).
public final class AgentStats: @unchecked Sendable {
    /// What went wrong, as counted in `errors` (and the metric's `kind` label).
    public enum ErrorKind: String, CaseIterable, Sendable, Codable {
        /// No connection: connect, or the handshake, failed.
        case connect
        /// An established connection was lost (reset, closed, silent past the I/O deadline).
        case connection
        /// The collector refused the agent (credentials, version) or reported an error that
        /// closed the connection.
        case refused
        /// The collector could not commit one segment (it is offered again).
        case segment
        /// The collector found a segment's checksum wrong (it is sealed again and resent).
        case checksum
        /// The collector had no room for a segment now (free-space reserve, partial limit).
        case deferred
        /// A spool file could not be sealed, or the agent state could not record it.
        case seal
        /// An acknowledged file could not be removed or archived (retried).
        case remove
        /// A file in a spool that will not ship (a name that cannot be shipped, not a regular
        /// file, unreadable, refused by the collector): once per file.
        case unshippable
    }


    public struct Spool: Codable, Sendable, Equatable {
        public var acknowledgedSegments: UInt64 = 0
        public var acknowledgedBytes: UInt64 = 0
    }

    public struct Snapshot: Sendable {
        /// When the stats were made: the process's start (wall clock), kept across reloads.
        public var startedAt = Date().timeIntervalSince1970
        public var acknowledgedSegments: UInt64 = 0
        public var acknowledgedBytes: UInt64 = 0
        public var sentBytes: UInt64 = 0
        public var connects: UInt64 = 0
        public var reconnects: UInt64 = 0
        public var resumes: UInt64 = 0
        public var resumedBytes: UInt64 = 0
        public var errors: [ErrorKind: UInt64] = [:]
        public var spools: [String: Spool] = [:]
        /// Bytes sent per second over the last 10 s.
        public var sendRate: Double = 0
        /// Bytes acknowledged per second over the last 10 s.
        public var ackRate: Double = 0
    }

    private let lock = NSLock()
    private var s = Snapshot()
    private var errors: ErrorCounts<ErrorKind>
    private var sentRing = RateRing()
    private var ackRing = RateRing()
    // The same events as swift-metrics counters (Prometheus names: docs/OPERATIONS.md).
    let factory: any MetricsFactory
    private let mSent: Counter
    private let mReconnects: Counter
    private let mResumes: Counter
    private let mResumedBytes: Counter
    /// Per spool: segments and bytes shipped. Under `lock`.
    private var mSpools: [String: (segments: Counter, bytes: Counter)] = [:]

    /// `factory` makes the metrics (swift-metrics' no-op one when there is no metrics listener).
    public init(factory: any MetricsFactory = NOOPMetricsHandler.instance) {
        self.factory = factory
        mSent = Counter(label: "spoolship_agent_sent_bytes_total", factory: factory)
        mReconnects = Counter(label: "spoolship_agent_reconnects_total", factory: factory)
        mResumes = Counter(label: "spoolship_agent_resumes_total", factory: factory)
        mResumedBytes = Counter(label: "spoolship_agent_resumed_bytes_total", factory: factory)
        errors = ErrorCounts(label: "spoolship_agent_errors_total", factory: factory)
    }

    /// Makes the slots of these spools (before their first event).
    public func register(spools: [String]) {
        lock.lock()
        for name in spools where s.spools[name] == nil {
            s.spools[name] = Spool()
            mSpools[name] = (Counter(label: "spoolship_agent_shipped_segments_total", dimensions: [("spool", name)], factory: factory),
                             Counter(label: "spoolship_agent_shipped_bytes_total", dimensions: [("spool", name)], factory: factory))
        }
        lock.unlock()
    }

    /// A connection to the collector was set up (welcome received).
    func connected() {
        lock.lock()
        s.connects += 1
        let again = s.connects > 1
        if again { s.reconnects += 1 }
        lock.unlock()
        if again { mReconnects.increment() }
    }

    /// Segment bytes handed to the kernel with sendfile.
    func sent(bytes: UInt64) {
        lock.lock()
        s.sentBytes &+= bytes
        sentRing.add(bytes, at: monotonicNow())
        lock.unlock()
        mSent.increment(by: Int64(clamping: bytes))
    }

    /// The collector acknowledged a segment as committed.
    func acknowledged(spool: String, bytes: UInt64) {
        lock.lock()
        s.acknowledgedSegments += 1
        s.acknowledgedBytes &+= bytes
        s.spools[spool]?.acknowledgedSegments += 1
        s.spools[spool]?.acknowledgedBytes &+= bytes
        ackRing.add(bytes, at: monotonicNow())
        if let m = mSpools[spool] {
            m.segments.increment()
            m.bytes.increment(by: Int64(clamping: bytes))
        }
        lock.unlock()
    }

    /// The collector held `bytes` of a segment already: it is sent from there.
    func resumed(bytes: UInt64) {
        lock.lock()
        s.resumes += 1
        s.resumedBytes &+= bytes
        lock.unlock()
        mResumes.increment()
        mResumedBytes.increment(by: Int64(clamping: bytes))
    }

    func error(_ kind: ErrorKind) {
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
        let now = monotonicNow()
        out.sendRate = sentRing.rate(at: now)
        out.ackRate = ackRing.rate(at: now)
        return out
    }
}

/// The collector's figures since start. Per-connection figures live in `ConnectionStats`.
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

    /// Which file an fdatasync was for (the metric's `file` label).
    public enum SyncedFile: String, CaseIterable, Sendable {
        case partial, ledger
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
        mFsync[file == .partial ? 0 : 1].recordSeconds(seconds)
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
final class ConnectionStats: @unchecked Sendable {
    struct Snapshot {
        var agentID: String?
        var address: String
        var since: Double
        var bytesIn: UInt64
        var segmentsCommitted: UInt64
        var bytesCommitted: UInt64
        var offersOpen: Int
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
    func snapshot() -> Snapshot { lock.lock(); defer { lock.unlock() }; return s }
}
