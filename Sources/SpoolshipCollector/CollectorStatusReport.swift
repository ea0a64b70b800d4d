import Foundation
import Glibc
import SpoolshipCore
import SpoolshipIO
import SpoolshipDaemon

public struct CollectorStatus: Codable, Sendable {
    public var version = StatusFormat.version
    public var daemon = "collector"
    public var pid: Int32
    public var collectorId: String
    public var listen: String
    public var dataDir: String
    public var startedAt: Double
    public var uptimeSeconds: Double
    /// "running" or "stopping".
    public var state: String
    /// Open connections, those still in their handshake included.
    public var connections: Int
    /// The agents connected now (handshake done), by agent id.
    public var agents: [Agent]
    public var totals: Totals
    public var disk: Disk
    public var errors: [String: UInt64]

    public struct Agent: Codable, Sendable {
        public var agentId: String
        public var address: String
        public var connectedSeconds: Double
        /// On this connection: segment bytes received, segments committed and their bytes,
        /// offers answered and not committed yet.
        public var bytesIn: UInt64
        public var segmentsCommitted: UInt64
        public var bytesCommitted: UInt64
        public var offersOpen: Int
        /// Partial files this agent has here (in transfer or left by a cut), and their bytes.
        public var partials: Int
        public var partialBytes: UInt64
        /// The transport ("plain TCP (sendfile, splice)", or the TLS version, cipher and what
        /// the kernel does), and the path of the payload in one word: tcp, ktls (TLS, the
        /// kernel decrypting, spliced) or tls (TLS in user space).
        public var transport: String
        public var path: String
    }

    public struct Totals: Codable, Sendable {
        public var connectionsAccepted: UInt64
        public var receivedBytes: UInt64
        public var receiveRateBytesPerSecond: Double
        public var committedSegments: UInt64
        public var committedBytes: UInt64
        public var resumes: UInt64
        public var resumedBytes: UInt64
        public var fsyncs: UInt64
        public var fsyncMeanSeconds: Double?
        /// Partial files of every agent, connected or not.
        public var partials: Int
        public var partialBytes: UInt64
    }

    public struct Disk: Codable, Sendable {
        /// Free bytes on the data dir's file system (absent if statvfs failed).
        public var freeBytes: UInt64?
        public var reserveBytes: UInt64
    }
}

extension Collector {
    /// The collector's status: figures since start, the connected agents, partials and free space.
    public func status() -> CollectorStatus {
        let snap = stats.snapshot()
        let now = Date().timeIntervalSince1970
        let c = config
        let conns = connectionList().map { $0.stats.snapshot() }
        let held = partialsByAgent()
        var agents: [CollectorStatus.Agent] = []
        for s in conns {
            guard let id = s.agentID else { continue }
            let p = held[id] ?? (0, 0)
            agents.append(CollectorStatus.Agent(
                agentId: id, address: s.address, connectedSeconds: StatusFormat.seconds(now - s.since),
                bytesIn: s.bytesIn, segmentsCommitted: s.segmentsCommitted, bytesCommitted: s.bytesCommitted,
                offersOpen: s.offersOpen, partials: p.count, partialBytes: p.bytes,
                transport: s.transport, path: s.path.rawValue))
        }
        agents.sort { $0.agentId < $1.agentId }
        var errors: [String: UInt64] = [:]
        for k in CollectorStats.ErrorKind.allCases { errors[k.rawValue] = snap.errors[k] ?? 0 }
        return CollectorStatus(
            pid: getpid(), collectorId: c.collectorID, listen: address, dataDir: c.dataDir,
            startedAt: startedAt, uptimeSeconds: StatusFormat.seconds(now - startedAt),
            state: isStopping ? "stopping" : "running",
            connections: conns.count, agents: agents,
            totals: CollectorStatus.Totals(
                connectionsAccepted: snap.connectionsAccepted, receivedBytes: snap.receivedBytes,
                receiveRateBytesPerSecond: snap.receiveRate.rounded(),
                committedSegments: snap.committedSegments, committedBytes: snap.committedBytes,
                resumes: snap.resumes, resumedBytes: snap.resumedBytes,
                fsyncs: snap.fsyncs, fsyncMeanSeconds: snap.fsyncs > 0 ? (snap.fsyncSeconds / Double(snap.fsyncs) * 1e6).rounded() / 1e6 : nil,
                partials: held.values.reduce(0) { $0 + $1.count }, partialBytes: held.values.reduce(0) { $0 + $1.bytes }),
            disk: CollectorStatus.Disk(freeBytes: Files.freeBytes(c.dataDir), reserveBytes: c.freeSpaceReserve),
            errors: errors)
    }

    /// The partial files under `.spoolship/partial/<agent>/`, counted per agent (read from
    /// the directory: what is on disk, left-overs of agents not connected included).
    func partialsByAgent() -> [String: (count: Int, bytes: UInt64)] {
        var out: [String: (count: Int, bytes: UInt64)] = [:]
        for (agent, dir) in dataDir.partialDirectories() {
            var e = (count: 0, bytes: UInt64(0))
            for entry in (try? Files.entries(of: dir)) ?? [] {
                guard let name = entry.name, DataDirLayout.isPartialFile(name),
                      let st = try? Files.statAt(dir, name, label: dataDir.layout.partialFilePath(agent: agent, name: name)),
                      (st.st_mode & S_IFMT) == S_IFREG else { continue }
                e.count += 1
                e.bytes += UInt64(st.st_size)
            }
            if e.count > 0 { out[agent] = e }
        }
        return out
    }
}
