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
