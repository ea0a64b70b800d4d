import Foundation
import Glibc
import SpoolshipCore
import SpoolshipIO
import SpoolshipDaemon

public struct AgentStatus: Codable, Sendable {
    public var version = StatusFormat.version
    public var daemon = "agent"
    public var pid: Int32
    public var agentId: String
    public var collector: String
    /// Unix time of the process's start, and seconds since.
    public var startedAt: Double
    public var uptimeSeconds: Double
    /// "running", "starting" (or reloading: no agent runs for a moment) or "stopping".
    public var state: String
    public var connection: Connection
    public var spools: [Spool]
    public var totals: Totals
    /// Errors since start, by kind (AgentStats.ErrorKind), every kind present.
    public var errors: [String: UInt64]
    /// Files in the spools that will not ship, and why: the first `leftBehindShown`, by spool
    /// and name (each spool's `unshippable` counts them all). Names are escaped as in the log.
    public var leftBehind: [LeftBehind] = []
    public static let leftBehindShown = 100

    public struct LeftBehind: Codable, Sendable {
        public var spool: String
        public var name: String
        public var reason: String
    }

    public struct Connection: Codable, Sendable {
        /// "connected" or "disconnected".
        public var state: String
        public var collectorId: String?
        public var connectedSeconds: Double?
        /// While connected: the transport ("plain TCP (sendfile, splice)", or the TLS version,
        /// cipher and what the kernel does), and the path of the payload in one word: tcp,
        /// ktls (TLS, the kernel encrypting) or tls (TLS in user space).
        public var transport: String?
        public var path: String?
        public var lastError: String?
        public var lastErrorAgeSeconds: Double?
    }

    public struct Spool: Codable, Sendable {
        public var name: String
        /// "blobs" or "logs".
        public var kind: String
        public var directory: String
        /// Sealed segments the collector has not acknowledged yet, and their bytes.
        public var pendingSegments: Int
        public var pendingBytes: UInt64
        /// Age of the oldest of them: since it was sealed (since its file was last modified for
        /// one found sealed at the agent's start); absent when none.
        public var oldestPendingAgeSeconds: Double?
        /// Log spools: files rotated aside and not sealed yet (a producer may still hold them).
        public var rotatedToSeal: Int
        /// Files in the spool that will not ship (see `leftBehind`).
        public var unshippable: Int = 0
        /// Acknowledged by the collector since the process started.
        public var shippedSegments: UInt64
        public var shippedBytes: UInt64
        /// Followed log spools (`reopen = "never"`) only.
        public var follow: Follow?
    }

    public struct Follow: Codable, Sendable {
        /// Files the follower holds open (those under a stream's name, and older ones not
        /// finished yet).
        public var files: Int
        /// Since the process started: files found truncated (copytruncate) or rewritten in
        /// place, and the bytes known not to have been shipped because of it (at least).
        public var truncations: UInt64
        public var rewrites: UInt64
        public var lostBytes: UInt64
    }

    public struct Totals: Codable, Sendable {
        public var pendingSegments: Int
        public var pendingBytes: UInt64
        public var oldestPendingAgeSeconds: Double?
        public var shippedSegments: UInt64
        public var shippedBytes: UInt64
        /// Segment bytes written to the connection (resends included).
        public var sentBytes: UInt64
        /// Over the last 10 seconds: bytes sent, and bytes acknowledged, per second.
        public var sendRateBytesPerSecond: Double
        public var shipRateBytesPerSecond: Double
        public var reconnects: UInt64
        public var resumes: UInt64
        public var resumedBytes: UInt64
    }
}

extension Agent {
    /// This agent's status: the process's figures and the live state, read now.
    public func status() -> AgentStatus {
        let snap = stats.snapshot()
        let now = Date().timeIntervalSince1970
        let h = health.read()
        // A segment waits since it was sealed; one found sealed at start, since its file was
        // last modified (the seal time is not kept in the state).
        var bySpool: [String: (count: Int, bytes: UInt64, oldest: Double?)] = [:]
        for s in queue.all where !s.acked {
            var e = bySpool[s.spool] ?? (0, 0, nil)
            e.count += 1
            e.bytes += s.size
            e.oldest = min(e.oldest ?? .infinity, s.sealedAt ?? Double(s.mtimeNs) / 1e9)
            bySpool[s.spool] = e
        }
        var rotated: [String: Int] = [:]
        for r in rotations.all { rotated[r.spool, default: 0] += 1 }
        var st = AgentStatus.idle(config: config, stats: snap, state: threads.isStopped ? "stopping" : "running")
        func age(_ since: Double?) -> Double? { since.map { StatusFormat.seconds(now - $0) } }
        var oldest: Double?
        let followed = follower.fileCounts()
        for i in st.spools.indices {
            let name = st.spools[i].name
            if st.spools[i].follow != nil { st.spools[i].follow?.files = followed[name] ?? 0 }
            guard let e = bySpool[name] else { st.spools[i].rotatedToSeal = rotated[name] ?? 0; continue }
            st.spools[i].pendingSegments = e.count
            st.spools[i].pendingBytes = e.bytes
            st.spools[i].oldestPendingAgeSeconds = age(e.oldest)
            st.spools[i].rotatedToSeal = rotated[name] ?? 0
            st.totals.pendingSegments += e.count
            st.totals.pendingBytes += e.bytes
            oldest = min(oldest ?? .infinity, e.oldest ?? .infinity)
        }
        st.totals.oldestPendingAgeSeconds = age(oldest)
        for e in leftBehind.all {
            if let i = st.spools.firstIndex(where: { $0.name == e.spool }) { st.spools[i].unshippable += 1 }
            if st.leftBehind.count < AgentStatus.leftBehindShown {
                st.leftBehind.append(AgentStatus.LeftBehind(spool: e.spool, name: e.display, reason: e.reason))
            }
        }
        st.connection.state = h.connectedTo == nil ? "disconnected" : "connected"
        st.connection.collectorId = h.connectedTo
        st.connection.connectedSeconds = h.connectedSince.map { StatusFormat.seconds(now - $0) }
        st.connection.transport = h.transport
        st.connection.path = h.path?.rawValue
        st.connection.lastError = h.lastError
        st.connection.lastErrorAgeSeconds = h.lastErrorTime.map { StatusFormat.seconds(now - $0) }
        return st
    }
}

extension AgentStatus {
    /// The status without a running agent (starting, or between two during a reload): the
    /// configuration's spools, nothing pending known.
    public static func idle(config: AgentConfig, stats snap: AgentStats.Snapshot, state: String) -> AgentStatus {
        let now = Date().timeIntervalSince1970
        let spools = config.spools.map { s in
            let shipped = snap.spools[s.name] ?? AgentStats.Spool()
            let follows = s.logs?.follows == true
            return Spool(name: s.name, kind: s.logs == nil ? "blobs" : follows ? "followed" : "logs", directory: s.directory,
                         pendingSegments: 0, pendingBytes: 0, oldestPendingAgeSeconds: nil, rotatedToSeal: 0,
                         shippedSegments: shipped.acknowledgedSegments, shippedBytes: shipped.acknowledgedBytes,
                         follow: follows ? Follow(files: 0, truncations: shipped.followTruncations, rewrites: shipped.followRewrites,
                                                  lostBytes: shipped.followLostBytes) : nil)
        }
        var errors: [String: UInt64] = [:]
        for k in AgentStats.ErrorKind.allCases { errors[k.rawValue] = snap.errors[k] ?? 0 }
        return AgentStatus(
            pid: getpid(), agentId: config.agentID, collector: config.collector.description,
            startedAt: snap.startedAt, uptimeSeconds: StatusFormat.seconds(now - snap.startedAt), state: state,
            connection: Connection(state: "disconnected"),
            spools: spools,
            totals: Totals(pendingSegments: 0, pendingBytes: 0, oldestPendingAgeSeconds: nil,
                           shippedSegments: snap.acknowledgedSegments, shippedBytes: snap.acknowledgedBytes,
                           sentBytes: snap.sentBytes, sendRateBytesPerSecond: snap.sendRate.rounded(), shipRateBytesPerSecond: snap.ackRate.rounded(),
                           reconnects: snap.reconnects, resumes: snap.resumes, resumedBytes: snap.resumedBytes),
            errors: errors)
    }
}
