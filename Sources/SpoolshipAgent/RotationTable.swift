import Foundation
import SpoolshipCore
import SpoolshipDaemon
import Synchronization

/// The log spools' rotations not sealed yet, and each stream's last sequence number: what the
/// rotator renamed aside and the log sealer has still to seal. The rotator adds (`plan`,
/// `add`), the log sealer moves each through its phases and removes it once its segment
/// is admitted; a session turns a changed log segment back into a rotation (`add`).
/// Start-up recovery edits the table whole, before any thread runs (`recovering`).
final class RotationTable: Sendable {
    private struct Table {
        /// By id (the id their segment takes).
        var rotations: [UInt64: Rotation] = [:]
        /// The last sequence number given to each stream, by `spool/stream`.
        var lastSeq: [String: UInt64] = [:]
    }
    private let table: Mutex<Table>

    init(rotations: [UInt64: Rotation], lastSeq: [String: UInt64]) {
        table = Mutex(Table(rotations: rotations, lastSeq: lastSeq))
    }

    /// Start-up only (no thread of the agent runs yet): recovery's view of the whole table.
    func recovering<R>(_ body: (inout [UInt64: Rotation], inout [String: UInt64]) throws -> R) rethrows -> R {
        try table.withLock { t in try body(&t.rotations, &t.lastSeq) }
    }

    /// New rotations for these streams of `spool`: the next sequence number of each, and an id.
    func plan(spool: String, streams: [(name: String, dev: UInt64, ino: UInt64)], ids: SegmentIDs) -> [Rotation] {
        table.withLock { t in
            streams.map { d in
                let key = "\(spool)/\(d.name)"
                let seq = (t.lastSeq[key] ?? 0) + 1
                t.lastSeq[key] = seq
                return Rotation(id: ids.next(), spool: spool, stream: d.name, seq: seq, dev: d.dev, ino: d.ino)
            }
        }
    }

    /// Rotations whose rename happened (or a log segment to seal again).
    func add(_ rs: [Rotation]) {
        table.withLock { t in for r in rs { t.rotations[r.id] = r } }
    }

    func remove(_ id: UInt64) { table.withLock { _ = $0.rotations.removeValue(forKey: id) } }

    func get(_ id: UInt64) -> Rotation? { table.withLock { $0.rotations[id] } }

    /// Changes one rotation in place (nil when it is gone).
    @discardableResult
    func update<R>(_ id: UInt64, _ body: (inout Rotation) -> R) -> R? {
        table.withLock { t in
            guard var r = t.rotations[id] else { return nil }
            defer { t.rotations[id] = r }
            return body(&r)
        }
    }

    /// The rotations the log sealer looks at: those renamed, in id order.
    var renamed: [Rotation] { table.withLock { $0.rotations.values.filter(\.isRenamed).sorted { $0.id < $1.id } } }
    var all: [Rotation] { table.withLock { Array($0.rotations.values) } }
    var isEmpty: Bool { table.withLock { $0.rotations.isEmpty } }
    var count: Int { table.withLock { $0.rotations.count } }
    var lastSeq: [String: UInt64] { table.withLock { $0.lastSeq } }
}
