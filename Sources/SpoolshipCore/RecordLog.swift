import Foundation

/// The text format shared by the agent's state journal and the collector's ledger: one record
/// per line, `CRC32HEX JSON\n`, where the CRC-32 covers the JSON bytes. The first line is a
/// header record naming the file's kind and format version.
///
/// A line whose checksum does not match, or a last line without its newline, is a torn or
/// damaged write: reading stops there and reports how many bytes were good, so that the
/// owner can truncate the tail and go on (the records after a damaged one were never
/// acknowledged to anyone, because each acknowledgement waits for the sync that covers it).
public enum RecordLog {
    public struct Header: Codable, Equatable, Sendable {
        public var kind: String
        public var version: Int
        public init(kind: String, version: Int) {
            self.kind = kind
            self.version = version
        }
    }

    public enum ReadError: Error, CustomStringConvertible, Equatable {
        case wrongKind(expected: String, found: String)
        case unsupportedVersion(kind: String, version: Int, supported: Int)
        case missingHeader

        public var description: String {
            switch self {
            case .wrongKind(let e, let f): return "file holds \(f) records, expected \(e)"
            case .unsupportedVersion(let k, let v, let s): return "\(k) format version \(v) is not supported (this build reads \(s))"
            case .missingHeader: return "file has no valid header line"
            }
        }
    }

    public struct Contents<R: Decodable> {
        public var records: [R]
        /// Bytes of the file up to the end of its last valid line (header included).
        public var goodBytes: Int
        /// Whether anything after `goodBytes` was dropped (a torn or damaged tail).
        public var droppedTail: Bool
        /// Damaged lines followed by valid ones: skipped, and reported, but not the end of
        /// the file (a flipped bit must not hide the acknowledged records after it).
        public var damagedLines: Int = 0
    }

    static let encoder: JSONEncoder = {
        let e = JSONEncoder()
        e.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return e
    }()

    public static func line<R: Encodable>(_ record: R) -> [UInt8] {
        // Encoding our own plain records cannot fail.
        let json = (record as? RecordLogJSON)?.json() ?? Array(try! encoder.encode(record))
        var out = Array(hex32(CRC32.of(json)).utf8)
        out.append(UInt8(ascii: " "))
        out += json
        out.append(UInt8(ascii: "\n"))
        return out
    }

    public static func headerLine(kind: String, version: Int) -> [UInt8] {
        line(Header(kind: kind, version: version))
    }

    /// Parses a whole file. An empty file is valid and empty.
    public static func parse<R: Decodable>(_ bytes: [UInt8], kind: String, version: Int, as: R.Type) throws -> Contents<R> {
        var records: [R] = []
        var pos = 0
        var goodEnd = 0
        var middle = 0
        var sinceGood = 0
        var sawHeader = false
        let decoder = JSONDecoder()
        while pos < bytes.count {
            // A last line without its newline is a torn write.
            guard let nl = bytes[pos...].firstIndex(of: UInt8(ascii: "\n")) else { break }
            let line = bytes[pos..<nl]
            pos = nl + 1
            guard line.count > 9, line[line.startIndex + 8] == UInt8(ascii: " "),
                let want = UInt32(String(decoding: line.prefix(8), as: UTF8.self), radix: 16),
                CRC32.of(line.dropFirst(9)) == want
            else {
                sinceGood += 1
                continue
            }
            let json = Data(line.dropFirst(9))
            if !sawHeader {
                guard sinceGood == 0, let h = try? decoder.decode(Header.self, from: json) else { throw ReadError.missingHeader }
                guard h.kind == kind else { throw ReadError.wrongKind(expected: kind, found: h.kind) }
                guard h.version <= version else { throw ReadError.unsupportedVersion(kind: kind, version: h.version, supported: version) }
                sawHeader = true
            } else if let r = try? decoder.decode(R.self, from: json) {
                records.append(r)
            } else {
                sinceGood += 1
                continue
            }
            // Damaged lines before a valid one were in the middle of the file, not its tail.
            middle += sinceGood
            sinceGood = 0
            goodEnd = pos
        }
        return Contents(records: records, goodBytes: goodEnd, droppedTail: goodEnd < bytes.count, damagedLines: middle)
    }
}

/// A record that writes its own JSON: byte for byte what `RecordLog.encoder` writes (keys
/// sorted, absent optionals left out, slashes not escaped), without JSONEncoder's cost, which
/// was a tenth of the agent's CPU on small files (three journal records a file). A unit test
/// holds the two to the same bytes.
public protocol RecordLogJSON {
    func json() -> [UInt8]
}

/// Writes one flat JSON object; the caller gives the keys in sorted order.
public struct JSONObjectWriter {
    public private(set) var bytes: [UInt8] = [UInt8(ascii: "{")]

    public init() { bytes.reserveCapacity(192) }

    private mutating func key(_ k: StaticString) {
        if bytes.count > 1 { bytes.append(UInt8(ascii: ",")) }
        bytes.append(UInt8(ascii: "\""))
        k.withUTF8Buffer { bytes.append(contentsOf: $0) }
        bytes.append(UInt8(ascii: "\""))
        bytes.append(UInt8(ascii: ":"))
    }

    public mutating func field<I: BinaryInteger>(_ k: StaticString, _ v: I?) {
        guard let v = v else { return }
        key(k)
        bytes.append(contentsOf: String(v).utf8)
    }

    public mutating func field(_ k: StaticString, _ v: Bool?) {
        guard let v = v else { return }
        key(k)
        bytes.append(contentsOf: (v ? "true" : "false").utf8)
    }

    public mutating func field(_ k: StaticString, _ v: String?) {
        guard let v = v else { return }
        key(k)
        bytes.append(UInt8(ascii: "\""))
        for c in v.utf8 {
            switch c {
            case UInt8(ascii: "\""): bytes += [UInt8(ascii: "\\"), c]
            case UInt8(ascii: "\\"): bytes += [UInt8(ascii: "\\"), c]
            case 0x08: bytes += Array("\\b".utf8)
            case 0x0C: bytes += Array("\\f".utf8)
            case 0x0A: bytes += Array("\\n".utf8)
            case 0x0D: bytes += Array("\\r".utf8)
            case 0x09: bytes += Array("\\t".utf8)
            case 0..<0x20:
                let hex = Array("0123456789abcdef".utf8)
                bytes += Array("\\u00".utf8) + [hex[Int(c >> 4)], hex[Int(c & 15)]]
            default: bytes.append(c)
            }
        }
        bytes.append(UInt8(ascii: "\""))
    }

    public mutating func finish() -> [UInt8] {
        bytes.append(UInt8(ascii: "}"))
        return bytes
    }
}

extension RecordLog.Header: RecordLogJSON {
    public func json() -> [UInt8] {
        var w = JSONObjectWriter()
        w.field("kind", kind)
        w.field("version", version)
        return w.finish()
    }
}

extension LedgerEntry: RecordLogJSON {
    public func json() -> [UInt8] {
        var w = JSONObjectWriter()
        w.field("crc", crc)
        w.field("name", name)
        w.field("size", size)
        w.field("spool", spool)
        w.field("stored", stored)
        w.field("time", time)
        return w.finish()
    }
}

extension StateRecord: RecordLogJSON {
    public func json() -> [UInt8] {
        var w = JSONObjectWriter()
        w.field("birth", birth)
        w.field("crc", crc)
        w.field("dev", dev)
        w.field("id", id)
        w.field("ino", ino)
        w.field("kind", kind?.rawValue)
        w.field("moved", moved)
        w.field("mtimeNs", mtimeNs)
        w.field("name", name)
        w.field("offset", offset)
        w.field("op", op.rawValue)
        w.field("seq", seq)
        w.field("size", size)
        w.field("spool", spool)
        w.field("stored", stored)
        w.field("tail", tail)
        return w.finish()
    }
}

/// One line of the collector's ledger (`.spoolship/ledger/<agent-id>.ledger`): a segment that
/// was committed, and the name it was committed under.
public struct LedgerEntry: Codable, Equatable, Sendable {
    public var spool: String
    public var name: String
    public var size: UInt64
    public var crc: UInt32
    public var stored: String
    /// Seconds since the epoch at commit.
    public var time: Int64

    public init(key: SegmentKey, stored: String, time: Int64) {
        self.spool = key.spool
        self.name = key.name
        self.size = key.size
        self.crc = key.crc
        self.stored = stored
        self.time = time
    }

    public var key: SegmentKey { SegmentKey(spool: spool, name: name, size: size, crc: crc) }

    public static let kind = "spoolship-ledger"
    public static let version = 1
}

/// One line of the agent's state journal (`<state-dir>/state.journal`).
public struct StateRecord: Codable, Equatable, Sendable {
    public enum Op: String, Codable, Sendable {
        /// A segment was sealed: its identity and checksum are fixed from here on.
        case seal
        /// The collector acknowledged the segment as committed. Synced before any deletion.
        case ack
        /// The local copy is gone (deleted or archived) and its directory synced; or, for a
        /// rotation, its file vanished before it could be sealed.
        case done
        /// A log stream's active file (`name`, with `dev`/`ino`) is about to be renamed to
        /// segment `seq`. Synced before the rename, so a sequence number is never reused; the
        /// segment's `seal` record later carries the same id.
        case rotate
        /// The last sequence number used by a stream (`name`); written by compaction, so the
        /// numbers go on from there once every segment of the stream is done.
        case sequence
        /// A followed file (`reopen = "never"`): stream `name`, the file's identity (`dev`,
        /// `ino`, `birth`), and `offset`, where its next range starts. Written when the agent
        /// starts the file over (it was truncated or rewritten) and by compaction; a `seal`
        /// with an `offset` moves it on to the end of its range.
        case follow
        /// A followed file that is finished (not under its name any more, cut to its end,
        /// written by no one): its position is forgotten.
        case unfollow
    }

    public var op: Op
    public var id: UInt64
    // seal only
    public var spool: String?
    public var name: String?
    public var kind: SegmentKind?
    public var dev: UInt64?
    public var ino: UInt64?
    public var size: UInt64?
    public var crc: UInt32?
    public var mtimeNs: Int64?
    // seal of a range of a followed file, and follow: where the range starts in the file, and
    // the file's birth time (statx; 0 where the file system keeps none)
    public var offset: UInt64?
    public var birth: Int64?
    /// The CRC-32 of the last 4 KiB (at most) before the end of the range (seal) or before
    /// `offset` (follow): the agent checks it before it cuts the file again.
    public var tail: UInt32?
    /// A followed range moved to logrotate's copy of its file: it does not move the copy's
    /// position.
    public var moved: Bool?
    // ack only
    public var stored: String?
    // rotate, sequence
    public var seq: UInt64?

    public init(op: Op, id: UInt64) {
        self.op = op
        self.id = id
    }

    public static let kind = "spoolship-agent-state"
    /// 2 added the `rotate` and `sequence` records of log spools: an older agent refuses
    /// the file instead of skipping them as damaged lines. 3 added followed files: `seal`
    /// records with `offset` and `birth`, and `follow` records.
    public static let version = 3
}
