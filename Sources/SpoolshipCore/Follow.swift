// Following log files that their producers never reopen (`reopen = "never"`): the agent does
// not rename the file; it cuts the file's growth into segments, each a byte range of one file,
// sent with sendfile from that offset. The state machine of one stream is here, pure, so that
// a model test can hold it to "every byte once, in order" against producers and rotations
// that a test drives; the agent's LogFollower does the syscalls.

/// A file as the follower knows it: device and inode, and its birth time (statx; 0 where the
/// file system keeps none), which tells it from a later file that reuses the inode.
public struct FileIdentity: Hashable, Sendable, CustomStringConvertible {
    public var dev: UInt64
    public var ino: UInt64
    public var birth: Int64

    public init(dev: UInt64, ino: UInt64, birth: Int64) {
        self.dev = dev
        self.ino = ino
        self.birth = birth
    }

    public var description: String { "\(dev):\(ino)" + (birth != 0 ? "@\(birth)" : "") }
}

/// The last bytes before a file's cut point, as they were when cut: a file rewritten in place
/// under what was already cut no longer matches.
public struct TailCheck: Sendable, Equatable {
    public var from: UInt64
    public var crc: UInt32
    public init(from: UInt64, crc: UInt32) {
        self.from = from
        self.crc = crc
    }
    /// How many bytes before the cut point are checked.
    public static let window: UInt64 = 4096
}

/// One file of a followed stream.
public struct FollowedFile: Sendable, Equatable {
    public var identity: FileIdentity
    /// Bytes [0, cutEnd) are in segments.
    public var cutEnd: UInt64
    /// The size at the last look.
    public var size: UInt64
    /// When bytes past `cutEnd` were first seen since the last cut (monotonic seconds).
    public var pendingSince: Double?
    /// Still the file under the stream's name. A file renamed away (logrotate) or deleted is
    /// followed by its descriptor until nothing more can come.
    public var current: Bool
    /// No process holds it open for writing (looked at only for files no longer current).
    public var noWriters = false
    public var tail: TailCheck?
    /// Bytes past this are never cut (logrotate's copy of a truncated file: a last record it
    /// caught half written is torn, and not shipped).
    public var limit: UInt64?

    public init(identity: FileIdentity, cutEnd: UInt64 = 0, size: UInt64 = 0, current: Bool) {
        self.identity = identity
        self.cutEnd = cutEnd
        self.size = size
        self.current = current
    }

    /// A file that is not under the name any more, cut to its end, and written by no one:
    /// nothing more will come from it.
    public var finished: Bool { !current && noWriters && cutEnd >= size }
}

/// A range of one file to seal as a segment.
public struct FollowCut: Sendable, Equatable {
    public var file: FileIdentity
    public var from: UInt64
    public var to: UInt64
    public var length: UInt64 { to - from }
}

/// What a look found that the operator must hear of.
public enum FollowSurprise: Sendable, Equatable {
    /// The file shrank below what was cut (copytruncate, or `: > file`): it is followed again
    /// from its start. `unshipped` bytes had been seen past the cut point and are gone, and
    /// whatever was written after the last look before the truncation with them. `tail`: the
    /// file's tail check as it was (to know logrotate's copy by).
    case truncated(file: FileIdentity, cutEnd: UInt64, unshipped: UInt64, sizeNow: UInt64, tail: TailCheck?)
    /// The bytes just before the cut point changed: the file was rewritten in place. It is
    /// followed again from its start (the new content ships whole).
    case rewritten(file: FileIdentity, cutEnd: UInt64, unshipped: UInt64)
}

/// One stream: its files, oldest first (the one under the name last).
public struct FollowStream: Sendable, Equatable {
    public private(set) var files: [FollowedFile] = []

    public init(files: [FollowedFile] = []) { self.files = files }

    public var current: FollowedFile? { files.last(where: \.current) }

    /// A new file under the stream's name (the first look, or after a rotation): the one
    /// before it is no longer current. A file seen before (renamed back) is only made current.
    public mutating func adopt(_ f: FollowedFile) {
        for i in files.indices { files[i].current = false }
        if let i = files.firstIndex(where: { $0.identity == f.identity }) {
            files[i].current = true
            let moved = files.remove(at: i)
            files.append(moved)
        } else {
            var f = f
            f.current = true
            files.append(f)
        }
    }

    /// Puts a file in just before another (logrotate's copy of a truncated file: its rest goes
    /// before the truncated file's new bytes).
    public mutating func insertBefore(_ id: FileIdentity, _ f: FollowedFile) {
        guard !files.contains(where: { $0.identity == f.identity }) else { return }
        files.insert(f, at: files.firstIndex { $0.identity == id } ?? files.endIndex)
    }

    /// Puts a file first, as the oldest (one found at start through a process's descriptor).
    public mutating func insertFirst(_ f: FollowedFile) {
        guard !files.contains(where: { $0.identity == f.identity }) else { return }
        files.insert(f, at: 0)
    }

    /// The name no longer holds the current file (renamed away, deleted).
    public mutating func nameGone() {
        for i in files.indices { files[i].current = false }
    }

    /// A fresh size of one file, looked at newest file first (see `plan`).
    public mutating func observe(_ id: FileIdentity, size: UInt64, now: Double) -> FollowSurprise? {
        guard let i = files.firstIndex(where: { $0.identity == id }) else { return nil }
        var surprise: FollowSurprise?
        if size < files[i].cutEnd {
            surprise = .truncated(file: id, cutEnd: files[i].cutEnd, unshipped: files[i].size - files[i].cutEnd, sizeNow: size, tail: files[i].tail)
            files[i].cutEnd = 0
            files[i].tail = nil
            files[i].pendingSince = nil  // the age of the new content counts from now
        }
        files[i].size = max(min(size, files[i].limit ?? .max), files[i].cutEnd)
        if files[i].size > files[i].cutEnd {
            if files[i].pendingSince == nil { files[i].pendingSince = now }
        } else {
            files[i].pendingSince = nil
        }
        return surprise
    }

    /// The file was rewritten in place (its tail check failed): followed again from its start.
    public mutating func rewritten(_ id: FileIdentity, now: Double) -> FollowSurprise? {
        guard let i = files.firstIndex(where: { $0.identity == id }) else { return nil }
        let s = FollowSurprise.rewritten(file: id, cutEnd: files[i].cutEnd, unshipped: files[i].size - files[i].cutEnd)
        files[i].cutEnd = 0
        files[i].tail = nil
        files[i].pendingSince = files[i].size > 0 ? now : nil
        return s
    }

    /// Whether a file no longer current is written by anyone.
    public mutating func setWriters(_ id: FileIdentity, _ writers: Bool) {
        if let i = files.firstIndex(where: { $0.identity == id }) { files[i].noWriters = !writers }
    }

    /// Bytes seen and not yet cut.
    public var pending: UInt64 { files.reduce(0) { $0 + ($1.size - $1.cutEnd) } }

    /// The ranges to seal now, oldest file first, each file's from where it was cut last.
    ///
    /// Due once the stream's uncut bytes reach `rotateSize`, or the oldest of them is
    /// `rotateAge` old, or an old file can be finished, or with `all` (`--once`). A range ends
    /// at the last newline before its end (`lastNewline(file, from, to)`: the offset of the
    /// last newline in [from, to), or nil), so that a segment holds whole records; a partial
    /// last line waits for its newline, unless it is `rotateAge` old (counted from the cut before it), the file is finished,
    /// or with `all`. Ranges are at most `rotateSize` long. A newer file is cut only once every
    /// older one is cut to its end: the producer wrote the older file first.
    ///
    /// Why the looks go newest file first: a producer that moves from the old file to the new
    /// one wrote every byte of the old file before the first byte of the new one. The size of
    /// the new file is read first, so the old file's size, read after, covers every byte that
    /// came before those; read the other way round, bytes written to the old file between the
    /// two looks would be cut after new-file bytes written later than they.
    public func plan(now: Double, rotateSize: UInt64, rotateAge: Double, all: Bool,
                     lastNewline: (FileIdentity, UInt64, UInt64) throws -> UInt64?) rethrows -> [FollowCut] {
        let pendingBytes = pending
        guard pendingBytes > 0 else { return [] }
        let oldest = files.compactMap(\.pendingSince).min() ?? now
        let ageUp = now - oldest >= rotateAge
        let finishing = files.contains { !$0.current && $0.noWriters && $0.size > $0.cutEnd }
        guard all || ageUp || finishing || pendingBytes >= rotateSize else { return [] }
        let chunk = max(rotateSize, 1)
        var cuts: [FollowCut] = []
        for f in files where f.size > f.cutEnd {
            let whole = all || (!f.current && f.noWriters)
            var pos = f.cutEnd
            while pos < f.size {
                var end = min(pos + chunk, f.size)
                if !(whole && end == f.size) {
                    if let nl = try lastNewline(f.identity, pos, end) {
                        end = nl + 1
                    } else if end == f.size && (!ageUp || pos > f.cutEnd) {
                        break  // a partial line: wait for its newline (or its own age)
                    }
                }
                cuts.append(FollowCut(file: f.identity, from: pos, to: end))
                pos = end
            }
            if pos < f.size { break }
        }
        return cuts
    }

    /// The cuts were sealed: each file's cut point moves on (`tails`: the new tail checks).
    public mutating func applied(_ cuts: [FollowCut], tails: [FileIdentity: TailCheck], now: Double) {
        for c in cuts {
            guard let i = files.firstIndex(where: { $0.identity == c.file }), files[i].cutEnd == c.from else { continue }
            files[i].cutEnd = c.to
            files[i].size = max(files[i].size, c.to)
            if let t = tails[c.file] { files[i].tail = t }
            files[i].pendingSince = files[i].size > files[i].cutEnd ? now : nil
        }
    }

    /// Forgets the files that are finished (the caller keeps their descriptors for the
    /// segments still in flight). Returns them.
    public mutating func dropFinished() -> [FollowedFile] {
        let done = files.filter(\.finished)
        files.removeAll(where: \.finished)
        return done
    }

    /// Forgets one file (it cannot be read any more).
    public mutating func remove(_ id: FileIdentity) {
        files.removeAll { $0.identity == id }
    }
}
