import Foundation
import Testing
@testable import SpoolshipCore

@Suite struct RecordLogTests {
    func ledgerBytes(_ entries: [LedgerEntry]) -> [UInt8] {
        RecordLog.headerLine(kind: LedgerEntry.kind, version: LedgerEntry.version) + entries.flatMap { RecordLog.line($0) }
    }

    let entries = [
        LedgerEntry(key: SegmentKey(spool: "inbox", name: "a b.txt", size: 10, crc: 0xdead_beef), stored: "a b.txt", time: 1),
        LedgerEntry(key: SegmentKey(spool: "inbox", name: "ü\"quoted\"", size: 0, crc: 0), stored: "ü\"quoted\"~1", time: 2),
    ]

    @Test func roundTrip() throws {
        let bytes = ledgerBytes(entries)
        let c = try RecordLog.parse(bytes, kind: LedgerEntry.kind, version: 1, as: LedgerEntry.self)
        #expect(c.records == entries)
        #expect(c.goodBytes == bytes.count)
        #expect(!c.droppedTail)
    }

    @Test func tornLastLine_isDroppedAndReported() throws {
        let bytes = ledgerBytes(entries)
        for cut in 1..<RecordLog.line(entries[1]).count {
            let torn = Array(bytes.dropLast(cut))
            let c = try RecordLog.parse(torn, kind: LedgerEntry.kind, version: 1, as: LedgerEntry.self)
            #expect(c.records == [entries[0]])
            #expect(c.droppedTail)
            #expect(c.goodBytes == bytes.count - RecordLog.line(entries[1]).count)
        }
    }

    @Test func flippedByteInTheLastLine_dropsItAsTheTail() throws {
        var bytes = ledgerBytes(entries)
        bytes[bytes.count - 5] ^= 0x20
        let c = try RecordLog.parse(bytes, kind: LedgerEntry.kind, version: 1, as: LedgerEntry.self)
        #expect(c.records == [entries[0]])
        #expect(c.droppedTail)
        #expect(c.damagedLines == 0)
    }

    @Test func flippedByteInTheMiddle_skipsThatLineOnly() throws {
        var bytes = ledgerBytes(entries)
        let headerCount = RecordLog.headerLine(kind: LedgerEntry.kind, version: 1).count
        bytes[headerCount + 12] ^= 0x20
        let c = try RecordLog.parse(bytes, kind: LedgerEntry.kind, version: 1, as: LedgerEntry.self)
        #expect(c.records == [entries[1]], "the records after a damaged line are kept")
        #expect(c.damagedLines == 1)
        #expect(!c.droppedTail)
    }

    @Test func tornHeader_isAnEmptyFileWithADroppedTail() throws {
        let header = RecordLog.headerLine(kind: LedgerEntry.kind, version: 1)
        let c = try RecordLog.parse(Array(header.dropLast(3)), kind: LedgerEntry.kind, version: 1, as: LedgerEntry.self)
        #expect(c.records.isEmpty && c.goodBytes == 0 && c.droppedTail)
    }

    @Test func wrongKindOrNewerVersion_isRefused() {
        let state = RecordLog.headerLine(kind: StateRecord.kind, version: 1)
        #expect(throws: RecordLog.ReadError.wrongKind(expected: LedgerEntry.kind, found: StateRecord.kind)) {
            try RecordLog.parse(state, kind: LedgerEntry.kind, version: 1, as: LedgerEntry.self)
        }
        let future = RecordLog.headerLine(kind: LedgerEntry.kind, version: 9)
        #expect(throws: RecordLog.ReadError.unsupportedVersion(kind: LedgerEntry.kind, version: 9, supported: 1)) {
            try RecordLog.parse(future, kind: LedgerEntry.kind, version: 1, as: LedgerEntry.self)
        }
    }

    @Test func emptyFile_isEmpty() throws {
        let c = try RecordLog.parse([], kind: LedgerEntry.kind, version: 1, as: LedgerEntry.self)
        #expect(c.records.isEmpty && c.goodBytes == 0 && !c.droppedTail)
    }

    @Test func stateRecords_roundTrip() throws {
        var seal = StateRecord(op: .seal, id: 7)
        seal.spool = "inbox"; seal.name = "x"; seal.kind = .blob; seal.dev = 1; seal.ino = 2; seal.size = 3; seal.crc = 4; seal.mtimeNs = 5
        var ack = StateRecord(op: .ack, id: 7)
        ack.stored = "x"
        let records = [seal, ack, StateRecord(op: .done, id: 7)]
        let bytes = RecordLog.headerLine(kind: StateRecord.kind, version: 1) + records.flatMap { RecordLog.line($0) }
        let c = try RecordLog.parse(bytes, kind: StateRecord.kind, version: 1, as: StateRecord.self)
        #expect(c.records == records)
    }

    /// The journal and the ledger write their records with a JSON writer of their own: it
    /// must give JSONEncoder's bytes, so that files written before and after read the same.
    @Test func ownJSONWriter_givesJSONEncodersBytes() throws {
        let awkward = (0..<0x20).map { String(UnicodeScalar(UInt8($0))) }.joined() + "\"\\/ü€𝄞\u{7f}name"
        var seal = StateRecord(op: .seal, id: .max)
        seal.spool = "inbox"; seal.name = awkward; seal.kind = .log; seal.dev = 0; seal.ino = .max
        seal.size = 4096; seal.crc = .max; seal.mtimeNs = .min
        var ack = StateRecord(op: .ack, id: 7)
        ack.stored = "a/b~1"
        var rotate = StateRecord(op: .rotate, id: 9)
        rotate.spool = "app"; rotate.name = "api.log"; rotate.seq = 12; rotate.dev = 3; rotate.ino = 4
        let states = [seal, ack, StateRecord(op: .done, id: 0), rotate]
        for r in states {
            #expect(r.json() == Array(try RecordLog.encoder.encode(r)), "\(r)")
        }
        var ledger = entries
        ledger.append(LedgerEntry(key: SegmentKey(spool: "s", name: awkward, size: .max, crc: 1), stored: awkward + "~2", time: .min))
        for e in ledger {
            #expect(e.json() == Array(try RecordLog.encoder.encode(e)), "\(e)")
        }
        let h = RecordLog.Header(kind: LedgerEntry.kind, version: 1)
        #expect(h.json() == Array(try RecordLog.encoder.encode(h)))
        // Every stored property is written: a field added later must be added to json() too.
        var full = seal
        full.stored = "x"; full.seq = 1; full.offset = 7; full.birth = 8; full.tail = 9; full.moved = true
        let keys = try #require(try JSONSerialization.jsonObject(with: Data(full.json())) as? [String: Any]).keys
        #expect(Set(keys) == Set(Mirror(reflecting: full).children.compactMap(\.label)))
        let ledgerKeys = try #require(try JSONSerialization.jsonObject(with: Data(entries[0].json())) as? [String: Any]).keys
        #expect(Set(ledgerKeys) == Set(Mirror(reflecting: entries[0]).children.compactMap(\.label)))
        // And what it writes reads back.
        let bytes = RecordLog.headerLine(kind: StateRecord.kind, version: StateRecord.version) + states.flatMap { RecordLog.line($0) }
        #expect(try RecordLog.parse(bytes, kind: StateRecord.kind, version: StateRecord.version, as: StateRecord.self).records == states)
    }
}
