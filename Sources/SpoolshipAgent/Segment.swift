import Foundation
import Glibc
import Logging
import SpoolshipCore
import SpoolshipIO
import SpoolshipDaemon
import Synchronization

/// A file's modification time in nanoseconds (part of what a seal records).
func mtimeNanoseconds(_ st: stat) -> Int64 { Int64(st.st_mtim.tv_sec) * 1_000_000_000 + Int64(st.st_mtim.tv_nsec) }

/// A file the agent sealed (its identity, size and checksum recorded in the journal) and has
/// not finished with: waiting, offered, or acknowledged and not yet removed.
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
    /// When this process sealed it (wall clock; not in the state file): nil for a segment
    /// found sealed in the state at start.
    var sealedAt: Double?
    /// A range of a followed file (`reopen = "never"`): where it starts in the file, and the
    /// file's birth time (its identity with `dev` and `ino`). nil for a whole file.
    var offset: UInt64?
    var birth: Int64 = 0
    /// A followed file's range is read from the follower's descriptor of that file (held from
    /// its first sight, whatever became of its name since). In memory only.
    var source: OwnedFD?
    /// How many times the follower had started the file over (truncated, rewritten) when
    /// the range was cut: a range of an earlier content is not read from the file any more.
    var followEpoch = 0
    /// A followed range: the CRC-32 of its last 4 KiB (at most, reaching back before its start).
    var tail: UInt32?
    /// A followed range moved to logrotate's copy of the file it was cut from: read from the
    /// copy, but not a range of the copy's own (its seal does not move the copy's position).
    var moved = false

    var key: SegmentKey { SegmentKey(spool: spool, name: name, size: size, crc: crc) }

    var isFollowed: Bool { offset != nil }
    var identity: FileIdentity { FileIdentity(dev: dev, ino: ino, birth: birth) }

    var sealRecord: StateRecord {
        var r = StateRecord(op: .seal, id: id)
        r.spool = spool; r.name = name; r.kind = kind; r.dev = dev; r.ino = ino
        r.size = size; r.crc = crc; r.mtimeNs = mtimeNs
        if let o = offset { r.offset = o; r.birth = birth; r.tail = tail; r.moved = moved ? true : nil }
        return r
    }
}

extension Segment {
    /// Whether `st` is this segment's file (device and inode).
    func isSameFile(_ st: stat) -> Bool { UInt64(st.st_dev) == dev && UInt64(st.st_ino) == ino }

    /// Whether `st` is this segment's file as it was sealed (size and mtime too): the one check
    /// of "is this still the file we sealed", before it is sent, at start, and before removal.
    func isSealed(_ st: stat) -> Bool {
        isSameFile(st) && UInt64(st.st_size) == size && mtimeNanoseconds(st) == mtimeNs
    }
}

/// The ids of segments and rotations (one sequence: a rotation's id becomes its segment's),
/// handed out by the blob watcher, the log rotator and a session's re-seal alike.
final class SegmentIDs: Sendable {
    private let nextID: Atomic<UInt64>
    init(next: UInt64) { nextID = Atomic(next) }
    func next() -> UInt64 { nextID.wrappingAdd(1, ordering: .relaxed).oldValue }
}
