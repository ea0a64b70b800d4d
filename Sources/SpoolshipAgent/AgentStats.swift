import CoreMetrics
import Foundation
import Glibc
import SpoolshipDaemon

/// The agent's figures since the process started (a reload keeps them).
///
/// `@unchecked Sendable`: the data path's threads all count here; every stored `var` is read
/// and written only while holding `lock`, and the metrics (swift-metrics handlers) are
/// thread-safe.
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
        /// Followed log files (`reopen = "never"`) found truncated (copytruncate) or rewritten
        /// in place, and the bytes known not to have been shipped because of it (at least).
        public var followTruncations: UInt64 = 0
        public var followRewrites: UInt64 = 0
        public var followLostBytes: UInt64 = 0
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
    /// Per spool, followed files: truncations, rewrites, bytes lost. Under `lock`.
    private var mFollow: [String: (truncations: Counter, rewrites: Counter, lost: Counter)] = [:]

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
            mFollow[name] = (Counter(label: "spoolship_agent_follow_truncations_total", dimensions: [("spool", name)], factory: factory),
                             Counter(label: "spoolship_agent_follow_rewrites_total", dimensions: [("spool", name)], factory: factory),
                             Counter(label: "spoolship_agent_follow_lost_bytes_total", dimensions: [("spool", name)], factory: factory))
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

    /// A followed file was truncated or rewritten under the follower; `lost` bytes at least
    /// were not shipped.
    func followSurprise(spool: String, truncated: Bool, lost: UInt64) {
        lock.lock()
        if truncated { s.spools[spool]?.followTruncations += 1 } else { s.spools[spool]?.followRewrites += 1 }
        s.spools[spool]?.followLostBytes &+= lost
        let m = mFollow[spool]
        lock.unlock()
        if truncated { m?.truncations.increment() } else { m?.rewrites.increment() }
        m?.lost.increment(by: Int64(clamping: lost))
    }

    /// Bytes of a followed file that cannot be shipped (a range that can no longer be read).
    func followLost(spool: String, bytes: UInt64) {
        lock.lock()
        s.spools[spool]?.followLostBytes &+= bytes
        let m = mFollow[spool]
        lock.unlock()
        m?.lost.increment(by: Int64(clamping: bytes))
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
