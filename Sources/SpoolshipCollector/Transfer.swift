import SpoolshipCore
import SpoolshipDaemon
import SpoolshipIO
import Synchronization

/// One partial segment being received: an open offer. The reader thread makes it (at the
/// offer's answer) and splices into its file; the durability thread checkpoints and commits
/// it. Its file and descriptor are `file`'s (R3); what both threads read and write is in
/// `state`, under its mutex.
final class Transfer: Sendable {
    let tag: UInt64
    let key: SegmentKey
    let file: PartialFile
    var partialName: String { file.name }
    var label: String { file.label }

    private struct State {
        /// Bytes in the file (the reader moves it on; the durability thread reads it).
        var written: Int64
        /// A sync failed (R2): nothing of it is acknowledged any more.
        var poisoned = false
        /// Replaced by a newer offer of the same segment (which uses the same partial file),
        /// or withdrawn by the agent.
        var retired = false
        /// Checkpoint scheduling: the reader asks, the durability thread clears `pending`.
        var lastCheckpointRequest: Int64
        var lastCheckpointTime: Double
        var checkpointPending = false
        /// The durability thread's: bytes known durable (R1), and the checksum (R5) of the
        /// bytes up to `crcOffset`.
        var synced: Int64
        var crc = CRC32()
        var crcOffset: Int64 = 0
    }
    private let state: Mutex<State>

    /// `held`: the durable bytes the offer was answered from.
    init(tag: UInt64, key: SegmentKey, file: PartialFile, held: Int64) {
        self.tag = tag
        self.key = key
        self.file = file
        state = Mutex(State(written: held, lastCheckpointRequest: held, lastCheckpointTime: monotonicNow(), synced: held))
    }

    var written: Int64 {
        get { state.withLock { $0.written } }
        set { state.withLock { $0.written = newValue } }
    }
    var poisoned: Bool {
        get { state.withLock { $0.poisoned } }
        set { state.withLock { $0.poisoned = newValue } }
    }
    var retired: Bool {
        get { state.withLock { $0.retired } }
        set { state.withLock { $0.retired = newValue } }
    }
    var synced: Int64 {
        get { state.withLock { $0.synced } }
        set { state.withLock { $0.synced = newValue } }
    }
    /// The checksum so far and the offset it has reached.
    var checksum: (crc: CRC32, offset: Int64) {
        get { state.withLock { ($0.crc, $0.crcOffset) } }
        set { state.withLock { $0.crc = newValue.crc; $0.crcOffset = newValue.offset } }
    }

    /// The reader's question, with the file at `reached`: is a checkpoint due (every `bytes`,
    /// or every `seconds` if anything arrived, and none pending)? If so it is marked pending
    /// and this returns true: the caller queues it.
    func checkpointDue(reached: Int64, now: Double, bytes: Int64, seconds: Double) -> Bool {
        state.withLock { s in
            guard !s.checkpointPending,
                  reached - s.lastCheckpointRequest >= bytes
                    || (now - s.lastCheckpointTime >= seconds && reached > s.lastCheckpointRequest)
            else { return false }
            s.lastCheckpointRequest = reached
            s.lastCheckpointTime = now
            s.checkpointPending = true
            return true
        }
    }

    /// The durability thread took the pending checkpoint (done or skipped).
    func checkpointFinished() { state.withLock { $0.checkpointPending = false } }
}

/// A connection's open offers, by tag, with what the admission of each new offer needs from
/// all of them: the bytes on offer, the bytes still to come, and the tag a segment is open
/// under. Kept up to date as offers open, receive and close, instead of summed over up to
/// `window` open offers for every offer. The reader thread's alone.
struct OpenTransfers {
    private var byTag: [UInt64: Transfer] = [:]
    private var tagByKey: [SegmentKey: UInt64] = [:]
    /// Each open offer's bytes received, as last counted in `landed` (0...size).
    private var counted: [UInt64: UInt64] = [:]
    /// The sum of the open offers' sizes, and of their bytes received.
    private(set) var onOffer: UInt64 = 0
    private var landed: UInt64 = 0

    /// The bytes the open offers have still to receive.
    var coming: UInt64 { onOffer - landed }
    var count: Int { byTag.count }
    var all: Dictionary<UInt64, Transfer>.Values { byTag.values }

    /// The tag under which a segment is open, if it is.
    func tag(of key: SegmentKey) -> UInt64? { tagByKey[key] }

    subscript(tag: UInt64) -> Transfer? {
        get { byTag[tag] }
        set {
            if let old = byTag.removeValue(forKey: tag) {
                onOffer -= old.key.size
                landed -= counted.removeValue(forKey: tag) ?? 0
                if tagByKey[old.key] == tag { tagByKey[old.key] = nil }
            }
            guard let t = newValue else { return }
            byTag[tag] = t
            tagByKey[t.key] = tag
            onOffer += t.key.size
            let c = Self.clamped(t.written, t.key.size)
            counted[tag] = c
            landed += c
        }
    }

    /// The open offer `t` has received bytes up to `reached`.
    mutating func received(_ t: Transfer, upTo reached: Int64) {
        guard byTag[t.tag] === t, let was = counted[t.tag] else { return }
        let c = Self.clamped(reached, t.key.size)
        landed = landed - was + c
        counted[t.tag] = c
    }

    mutating func removeAll() {
        self = OpenTransfers()
    }

    private static func clamped(_ written: Int64, _ size: UInt64) -> UInt64 { min(size, UInt64(max(0, written))) }
}
