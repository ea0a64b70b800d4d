import Foundation
import Glibc
import Logging
import SpoolshipCore
import SpoolshipIO

/// A segment the agent sealed and has not finished with.
struct Segment: Sendable {
    var id: UInt64
    var spool: String
    var name: String
    var kind: SegmentKind
    var dev: UInt64
    var ino: UInt64
    var size: UInt64
    var crc: UInt32
    var mtimeNs: Int64
    var acked: Bool = false
    var stored: String?

    var key: SegmentKey { SegmentKey(spool: spool, name: name, size: size, crc: crc) }

    var sealRecord: StateRecord {
        var r = StateRecord(op: .seal, id: id)
        r.spool = spool; r.name = name; r.kind = kind; r.dev = dev; r.ino = ino
        r.size = size; r.crc = crc; r.mtimeNs = mtimeNs
        return r
    }
}

/// The agent's crash-safe state: a journal of seal / ack / done records in the state dir
/// (`state.journal`, format in docs/FORMATS.md), replayed at start and compacted when it grows.
/// Acks are synced before anything is deleted (R4); seals and dones need no sync of their own,
/// since a lost seal is redone from the file and a lost done is redone from the ack.
final class AgentJournal {
    let dir: String
    static let fileName = "state.journal"
    private var fd: OwnedFD
    /// Lines in the journal since it was last compacted.
    private(set) var appended = 0
    /// Appends come from the watcher (seals) and the reaper (acks, dones).
    private let lock = NSLock()
    let lockFD: OwnedFD

    /// Opens (creating) the journal and returns it with the segments it holds.
    init(dir: String, logger: Logger) throws {
        self.dir = dir
        try Files.makeDirectories(dir, mode: 0o700)
        guard let lock = try Files.lockExclusive("\(dir)/lock") else {
            throw DaemonError("another agent is running with the state dir \(dir) (it holds \(dir)/lock)")
        }
        lockFD = lock
        fd = try Files.open("\(dir)/\(Self.fileName)", O_RDWR | O_CREAT | O_APPEND, mode: 0o600)
    }

    func load(logger: Logger) throws -> (segments: [UInt64: Segment], nextID: UInt64) {
        let bytes = try Files.readAll(fd)
        let path = "\(dir)/\(Self.fileName)"
        let contents: RecordLog.Contents<StateRecord>
        do {
            contents = try RecordLog.parse(bytes, kind: StateRecord.kind, version: StateRecord.version, as: StateRecord.self)
        } catch {
            throw DaemonError("cannot read the agent state \(path): \(error)")
        }
        if contents.droppedTail {
            logger.warning("agent state has a torn tail; dropping it", metadata: ["path": "\(path)", "bytes.dropped": "\(bytes.count - contents.goodBytes)"])
        }
        var segments: [UInt64: Segment] = [:]
        var nextID: UInt64 = 1
        for r in contents.records {
            nextID = max(nextID, r.id + 1)
            switch r.op {
            case .seal:
                guard let spool = r.spool, let name = r.name, let size = r.size, let crc = r.crc else { continue }
                segments[r.id] = Segment(id: r.id, spool: spool, name: name, kind: r.kind ?? .blob, dev: r.dev ?? 0, ino: r.ino ?? 0,
                                         size: size, crc: crc, mtimeNs: r.mtimeNs ?? 0)
            case .ack:
                segments[r.id]?.acked = true
                segments[r.id]?.stored = r.stored
            case .done:
                segments[r.id] = nil
            }
        }
        return (segments, nextID)
    }

    func append(_ records: [StateRecord], sync: Bool) throws {
        guard !records.isEmpty else { return }
        lock.lock()
        defer { lock.unlock() }
        var bytes: [UInt8] = []
        if appended == 0, try Files.fstat(fd).st_size == 0 {
            bytes += RecordLog.headerLine(kind: StateRecord.kind, version: StateRecord.version)
        }
        for r in records { bytes += RecordLog.line(r) }
        try Files.writeAll(fd, bytes)
        appended += records.count
        if sync { try Files.fdatasync(fd) }
    }

    /// Rewrites the journal with only the live segments: temp file, fsync, rename, fsync dir.
    func compact(_ live: [Segment]) throws {
        lock.lock()
        defer { lock.unlock() }
        var bytes = RecordLog.headerLine(kind: StateRecord.kind, version: StateRecord.version)
        for s in live.sorted(by: { $0.id < $1.id }) {
            bytes += RecordLog.line(s.sealRecord)
            if s.acked {
                var a = StateRecord(op: .ack, id: s.id)
                a.stored = s.stored
                bytes += RecordLog.line(a)
            }
        }
        try Files.replaceDurably(dir: dir, name: Self.fileName, bytes: bytes)
        let newFD = try Files.open("\(dir)/\(Self.fileName)", O_RDWR | O_CREAT | O_APPEND, mode: 0o600)
        try? fd.close()
        fd = newFD
        appended = live.count + live.filter(\.acked).count
    }
}
