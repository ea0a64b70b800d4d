import Foundation
import Glibc
import Logging
import SpoolshipCore
import SpoolshipIO
import SpoolshipDaemon

/// Where a followed file's next range starts (`follow` records, and the ends of its ranges'
/// `seal` records).
struct FollowPosition: Sendable, Equatable {
    var spool: String
    var stream: String
    var identity: FileIdentity
    var offset: UInt64
    /// The CRC-32 of the last 4 KiB (at most) before `offset`, when known.
    var tail: UInt32?
    /// Bytes past this are never cut (logrotate's copy: its torn last record).
    var limit: UInt64? = nil

    var record: StateRecord {
        var r = StateRecord(op: .follow, id: 0)
        r.spool = spool; r.name = stream; r.dev = identity.dev; r.ino = identity.ino; r.birth = identity.birth; r.offset = offset
        r.tail = tail
        r.size = limit
        return r
    }

    /// The tail check the follower starts the file with.
    var tailCheck: TailCheck? {
        tail.map { TailCheck(from: offset >= TailCheck.window ? offset - TailCheck.window : 0, crc: $0) }
    }

    /// The record that forgets a finished file.
    static func unfollow(_ id: FileIdentity) -> StateRecord {
        var r = StateRecord(op: .unfollow, id: 0)
        r.dev = id.dev; r.ino = id.ino; r.birth = id.birth
        return r
    }
}

/// What the journal held at start.
struct LoadedState {
    var segments: [UInt64: Segment] = [:]
    var rotations: [UInt64: Rotation] = [:]
    /// Last sequence number used, by `spool/stream`.
    var lastSeq: [String: UInt64] = [:]
    /// Where each followed file's next range starts.
    var follows: [FileIdentity: FollowPosition] = [:]
    var nextID: UInt64 = 1
}

/// The agent's crash-safe state: a journal of seal / ack / done records in the state dir
/// (`state.journal`, format in docs/FORMATS.md), replayed at start and compacted when it grows.
/// Acks are synced before anything is deleted (R4); seals and dones need no sync of their own,
/// since a lost seal is redone from the file and a lost done is redone from the ack.
///
/// `@unchecked Sendable`: appends come from several threads (the sealers, the rotator, the
/// reaper, a session's re-seal); `fd` and `lines` are read and written only while holding
/// `lock`.
final class AgentJournal: @unchecked Sendable {
    let dir: String
    static let fileName = "state.journal"
    private var fd: OwnedFD
    /// Lines in the journal since it was last compacted.
    private var lines = 0
    var appended: Int { lock.lock(); defer { lock.unlock() }; return lines }
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

    func load(logger: Logger) throws -> LoadedState {
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
        if contents.damagedLines > 0 {
            logger.warning("agent state has damaged lines; skipping them", metadata: ["path": "\(path)", "lines": "\(contents.damagedLines)"])
        }
        var st = LoadedState()
        for r in contents.records {
            st.nextID = max(st.nextID, r.id + 1)
            switch r.op {
            case .seal:
                guard let spool = r.spool, let name = r.name, let size = r.size, let crc = r.crc else { continue }
                var s = Segment(id: r.id, spool: spool, name: name, kind: r.kind ?? .blob, dev: r.dev ?? 0, ino: r.ino ?? 0,
                                size: size, crc: crc, mtimeNs: r.mtimeNs ?? 0)
                s.offset = r.offset
                s.birth = r.birth ?? 0
                s.moved = r.moved ?? false
                st.segments[r.id] = s
                st.rotations[r.id] = nil
                if let offset = r.offset, let p = LogNames.parse(segmentName: name) {
                    // A followed file's range: the file's next range starts at its end (not
                    // for a range moved to logrotate's copy of the file it was cut from).
                    let key = "\(spool)/\(p.stream)"
                    st.lastSeq[key] = max(st.lastSeq[key] ?? 0, p.seq)
                    if r.moved == true { continue }
                    let end = offset + size
                    if let was = st.follows[s.identity], was.spool == spool, was.stream == p.stream {
                        if end >= was.offset {
                            st.follows[s.identity] = FollowPosition(spool: spool, stream: p.stream, identity: s.identity, offset: end, tail: r.tail, limit: was.limit)
                        }
                    } else {
                        st.follows[s.identity] = FollowPosition(spool: spool, stream: p.stream, identity: s.identity, offset: end, tail: r.tail)
                    }
                }
            case .ack:
                st.segments[r.id]?.acked = true
                st.segments[r.id]?.stored = r.stored
            case .done:
                st.segments[r.id] = nil
                st.rotations[r.id] = nil
            case .rotate:
                guard let spool = r.spool, let stream = r.name, let seq = r.seq else { continue }
                st.rotations[r.id] = Rotation(id: r.id, spool: spool, stream: stream, seq: seq, dev: r.dev ?? 0, ino: r.ino ?? 0)
                st.lastSeq["\(spool)/\(stream)"] = max(st.lastSeq["\(spool)/\(stream)"] ?? 0, seq)
            case .sequence:
                guard let spool = r.spool, let stream = r.name, let seq = r.seq else { continue }
                st.lastSeq["\(spool)/\(stream)"] = max(st.lastSeq["\(spool)/\(stream)"] ?? 0, seq)
            case .follow:
                // Set, not raised: the file was started over (truncated, rewritten).
                guard let spool = r.spool, let stream = r.name, let offset = r.offset else { continue }
                let id = FileIdentity(dev: r.dev ?? 0, ino: r.ino ?? 0, birth: r.birth ?? 0)
                st.follows[id] = FollowPosition(spool: spool, stream: stream, identity: id, offset: offset, tail: r.tail, limit: r.size)
            case .unfollow:
                st.follows[FileIdentity(dev: r.dev ?? 0, ino: r.ino ?? 0, birth: r.birth ?? 0)] = nil
            }
        }
        return st
    }

    func append(_ records: [StateRecord], sync: Bool) throws {
        guard !records.isEmpty else { return }
        lock.lock()
        defer { lock.unlock() }
        var bytes: [UInt8] = []
        if lines == 0, try Files.fstat(fd).st_size == 0 {
            bytes += RecordLog.headerLine(kind: StateRecord.kind, version: StateRecord.version)
        }
        for r in records { bytes += RecordLog.line(r) }
        try Files.writeAll(fd, bytes)
        lines += records.count
        if sync { try Files.fdatasync(fd) }
    }

    /// Closes the journal and lets go of the state dir's lock.
    func close() {
        lock.lock()
        defer { lock.unlock() }
        try? fd.close()
        try? lockFD.close()
    }

    /// Rewrites the journal with only the live segments, the pending rotations and each log
    /// stream's last sequence number: temp file, fsync, rename, fsync dir.
    func compact(_ live: [Segment], rotations: [Rotation] = [], lastSeq: [String: UInt64] = [:], follows: [FollowPosition] = []) throws {
        lock.lock()
        defer { lock.unlock() }
        var bytes = RecordLog.headerLine(kind: StateRecord.kind, version: StateRecord.version)
        for (key, seq) in lastSeq.sorted(by: { $0.key < $1.key }) {
            guard let slash = key.firstIndex(of: "/") else { continue }
            var r = StateRecord(op: .sequence, id: 0)
            r.spool = String(key[..<slash]); r.name = String(key[key.index(after: slash)...]); r.seq = seq
            bytes += RecordLog.line(r)
        }
        for f in follows.sorted(by: { ($0.spool, $0.stream, $0.identity.ino) < ($1.spool, $1.stream, $1.identity.ino) }) {
            bytes += RecordLog.line(f.record)
        }
        for r in rotations.sorted(by: { $0.id < $1.id }) { bytes += RecordLog.line(r.record) }
        for s in live.sorted(by: { $0.id < $1.id }) {
            bytes += RecordLog.line(s.sealRecord)
            if s.acked {
                var a = StateRecord(op: .ack, id: s.id)
                a.stored = s.stored
                bytes += RecordLog.line(a)
            }
        }
        do {
            try Files.replaceDurably(dir: dir, name: Self.fileName, bytes: bytes)
        } catch {
            // A failure after the rename (the directory's fsync) leaves the new journal in
            // place: appends must go to it, not to the old file that the rename unlinked.
            if let now = try? Files.fstat(Files.open("\(dir)/\(Self.fileName)", O_RDONLY)), let old = try? Files.fstat(fd),
               now.st_ino != old.st_ino,
               let newFD = try? Files.open("\(dir)/\(Self.fileName)", O_RDWR | O_APPEND, mode: 0o600) {
                try? fd.close()
                fd = newFD
            }
            throw error
        }
        let newFD = try Files.open("\(dir)/\(Self.fileName)", O_RDWR | O_CREAT | O_APPEND, mode: 0o600)
        try? fd.close()
        fd = newFD
        lines = live.count + live.filter(\.acked).count + rotations.count + lastSeq.count + follows.count
    }
}
