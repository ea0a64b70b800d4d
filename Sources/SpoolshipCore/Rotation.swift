// The log rotator's state machines, pure so that they can be tested in-process against a
// model: a stream's active file as the rotator sees it (`LogStream`), and one rotation from
// its journal record to its seal (`Rotation`). The agent's LogRotator owns the instances and
// does the syscalls; nothing here touches a file.

/// A log stream's active file, as the rotator last saw it.
public struct LogStream: Sendable, Equatable {
    public var dev: UInt64 = 0
    public var ino: UInt64 = 0
    public var size: UInt64 = 0
    /// When the rotator first saw bytes in this file since it was last rotated (monotonic).
    public var firstDataAt: Double?
    /// The agent renamed the last file away: a new inode under the name is expected.
    public var expectNew = true
    public var warnedNotRegular = false
    /// After a failed rotation: not tried again before this time (monotonic).
    public var retryAfter: Double?

    public init(dev: UInt64 = 0, ino: UInt64 = 0, size: UInt64 = 0, firstDataAt: Double? = nil, expectNew: Bool = true) {
        self.dev = dev
        self.ino = ino
        self.size = size
        self.firstDataAt = firstDataAt
        self.expectNew = expectNew
    }

    /// What a fresh look at the active file found, beside whether it is due.
    public enum Surprise: Sendable, Equatable {
        /// Another file took the name, not after a rotation of ours: `lost` bytes of the old
        /// one since its last rotation were not shipped.
        case replaced(lost: UInt64)
        /// The file shrank (copytruncate?): from `before` to `now` bytes.
        case truncated(before: UInt64, now: UInt64)
        /// A new file under the name (after a rotation, or the first look).
        case adopted
    }

    /// Updates the stream from a stat of its active file (a regular file: the caller checks)
    /// taken at `now`, and says whether it is due for rotation: it holds bytes, is not backing
    /// off, and has reached `rotateSize` or `rotateAge` (or `all`: any bytes at all).
    public mutating func observe(dev: UInt64, ino: UInt64, size: UInt64, now: Double,
                                 rotateSize: UInt64, rotateAge: Double, all: Bool) -> (due: Bool, surprise: Surprise?) {
        var surprise: Surprise?
        if dev != self.dev || ino != self.ino {
            surprise = !expectNew && self.size > 0 ? .replaced(lost: self.size) : .adopted
            self = LogStream(dev: dev, ino: ino, size: 0, firstDataAt: nil, expectNew: false)
        } else if size < self.size {
            surprise = .truncated(before: self.size, now: size)
            firstDataAt = size > 0 ? now : nil
        }
        self.size = size
        if size > 0 && firstDataAt == nil { firstDataAt = now }
        guard size > 0 else { return (false, surprise) }
        if let r = retryAfter, now < r { return (false, surprise) }
        return (all || size >= rotateSize || now - (firstDataAt ?? now) >= rotateAge, surprise)
    }

    /// Whether the age of its oldest unrotated byte is up at `now`.
    public func ageUp(now: Double, rotateAge: Double) -> Bool {
        guard let first = firstDataAt else { return false }
        return now - first >= rotateAge
    }

    /// The bytes lost when the file vanished before a rotation (0 when none were pending).
    public var lostIfVanished: UInt64 { !expectNew && size > 0 ? size : 0 }
}

/// A log stream's active file that was (or is about to be) renamed aside as segment `seq`,
/// and is not sealed yet.
public struct Rotation: Sendable, Equatable {
    public var id: UInt64
    public var spool: String
    public var stream: String
    public var seq: UInt64
    public var dev: UInt64
    public var ino: UInt64
    // In memory only:
    /// The file's size when it was renamed: it can only grow from there.
    public var sizeAtRotation: UInt64 = 0
    public var phase: Phase = .journaled

    /// Where a rotation is, from its journal record to its seal. A crash in any phase is
    /// finished at the next start from the journal and the directories (the agent's LogRecovery).
    public enum Phase: Sendable, Equatable {
        /// Journaled (synced) before the rename; the rename is not known to have happened.
        case journaled
        /// Renamed into the rotated directory; the directories not synced since (R1: a renamed
        /// file counts only once its directory is synced). The sealer syncs them first.
        case renamed
        /// Renamed and synced: sealed as soon as no process holds it open for writing.
        case synced
        /// Synced, and a writer held it when the sealer last looked: since when (monotonic),
        /// and when the agent last said so in the log.
        case heldByWriter(since: Double, lastWarned: Double)
    }

    public init(id: UInt64, spool: String, stream: String, seq: UInt64, dev: UInt64, ino: UInt64) {
        self.id = id
        self.spool = spool
        self.stream = stream
        self.seq = seq
        self.dev = dev
        self.ino = ino
    }

    public var rawName: String { LogNames.segmentName(stream: stream, seq: seq, compressed: false) }
    public var gzName: String { LogNames.segmentName(stream: stream, seq: seq, compressed: true) }
    public var streamKey: String { "\(spool)/\(stream)" }
    /// Whether the rename is known to have happened (the sealer looks only at those).
    public var isRenamed: Bool { phase != .journaled }
    public var isSynced: Bool {
        switch phase {
        case .synced, .heldByWriter: return true
        case .journaled, .renamed: return false
        }
    }

    /// The rename happened (with the file's size then), and the directories were synced or not.
    public mutating func renamed(size: UInt64, synced: Bool) {
        sizeAtRotation = size
        phase = synced ? .synced : .renamed
    }

    /// Both directories were synced after the rename.
    public mutating func directoriesSynced() {
        if phase == .renamed { phase = .synced }
    }

    /// The sealer found a writer holding the file at `now`. Returns how long it has waited
    /// when it is time to say so again (after `warnAfter` seconds, then every `every`).
    public mutating func heldByWriter(at now: Double, warnAfter: Double, every: Double) -> Double? {
        var since = now, warned = 0.0
        if case .heldByWriter(let s, let w) = phase { since = s; warned = w }
        var waited: Double?
        if now - since >= warnAfter && now - warned >= every {
            warned = now
            waited = now - since
        }
        phase = .heldByWriter(since: since, lastWarned: warned)
        return waited
    }

    /// No writer holds the file any more. Returns how long it had waited, if it had.
    public mutating func writersGone(at now: Double) -> Double? {
        guard case .heldByWriter(let since, _) = phase else { return nil }
        phase = .synced
        return now - since
    }

    public var record: StateRecord {
        var r = StateRecord(op: .rotate, id: id)
        r.spool = spool; r.name = stream; r.seq = seq; r.dev = dev; r.ino = ino
        return r
    }
}
