/// The spoolship wire protocol, version 1 (docs/PROTOCOL.md is the reference).
///
/// A connection starts with the 4-byte preamble "SPSH" from each side. Then frames follow:
///
///     +----------------+--------+---------------------+
///     | length: u32 BE | type:u8 | body: length bytes |
///     +----------------+--------+---------------------+
///
/// Integers are big-endian; a string is a u16 byte count and UTF-8 bytes. A DATA frame's body
/// is only its header (tag, offset, length); its `length` payload bytes follow the frame raw,
/// so that the agent can `sendfile` them and the collector `splice` them.
public enum Wire {
    public static let preamble: [UInt8] = Array("SPSH".utf8)
    public static let version: UInt16 = 1
    public static let headerSize = 5
    /// The largest frame body either side accepts unless configured otherwise.
    public static let defaultMaxFrameBody = 64 * 1024
}

public enum FrameType: UInt8, Sendable {
    case hello = 0x01
    case welcome = 0x02
    case offer = 0x03
    case answer = 0x04
    case data = 0x05
    case checkpoint = 0x06
    case committed = 0x07
    case ping = 0x08
    case pong = 0x09
    /// Collector -> agent, after HELLO when the collector checks credentials: its nonce and
    /// its proof that it holds the agent's secret.
    case challenge = 0x0A
    /// Agent -> collector, answering CHALLENGE: the agent's proof.
    case auth = 0x0B
    case error = 0x0F
}

public enum SegmentKind: UInt8, Sendable, Codable {
    case blob = 0
    case log = 1
}

/// Error codes carried by ERROR frames. Codes below 100 close the connection; the others
/// concern one segment (named by the frame's tag) and the connection goes on.
public enum ErrorCode: UInt16, Sendable, CustomStringConvertible {
    case protocolViolation = 1
    case unsupportedVersion = 2
    case badName = 3
    case tooLarge = 4
    case authentication = 5
    case shuttingDown = 6
    case noSpace = 7
    case internalError = 8
    case stalled = 9
    /// Another connection that presents the same agent id is alive (heard from lately): two
    /// agents configured with one id. The message names the other connection's address.
    case agentIDInUse = 10
    /// The segment's bytes did not match its checksum: the collector discarded them; offer
    /// the segment again (re-sealing it) and send it from offset 0.
    case checksumMismatch = 100
    /// The collector could not make the segment durable (fsync or write error): it discarded
    /// the partial; offer the segment again.
    case ioError = 101
    /// The collector has no room for this segment above its free-space reserve: keep it and
    /// offer it again later (the connection goes on).
    case noSpaceRetry = 102
    /// The agent already has as much unfinished data at the collector as it may (open offers
    /// and left-over partials): keep the segment and offer it again later.
    case partialLimit = 103
    /// From the agent: it withdraws its offer of this tag before sending any DATA for it (the
    /// file changed or vanished after it was sealed); the collector forgets the offer and the
    /// connection goes on. The agent offers what the file holds now under a new tag.
    case withdrawn = 104

    public var closesConnection: Bool { rawValue < 100 }
    /// Nothing is wrong with the segment; the collector cannot take it now.
    public var retryLater: Bool { self == .noSpaceRetry || self == .partialLimit }

    public var description: String {
        switch self {
        case .protocolViolation: return "protocol violation"
        case .unsupportedVersion: return "unsupported protocol version"
        case .badName: return "bad name"
        case .tooLarge: return "too large"
        case .authentication: return "authentication failed"
        case .shuttingDown: return "collector shutting down"
        case .noSpace: return "no space left on the collector"
        case .internalError: return "internal error"
        case .stalled: return "stalled"
        case .agentIDInUse: return "agent id in use by another connection"
        case .checksumMismatch: return "checksum mismatch"
        case .ioError: return "I/O error"
        case .noSpaceRetry: return "no space for this segment; retry later"
        case .partialLimit: return "too much unfinished data for this agent; retry later"
        case .withdrawn: return "offer withdrawn by the agent"
        }
    }
}

public struct Hello: Equatable, Sendable {
    public var version: UInt16
    public var agentID: String
    /// Authentication material; empty in protocol v1 without `--agents`.
    public var auth: [UInt8]
    public init(version: UInt16 = Wire.version, agentID: String, auth: [UInt8] = []) {
        self.version = version
        self.agentID = agentID
        self.auth = auth
    }
}

public struct Welcome: Equatable, Sendable {
    public var version: UInt16
    public var collectorID: String
    public var maxFrameBody: UInt32
    public var maxSegmentSize: UInt64
    /// How many offers the agent may have outstanding (offered, not yet committed).
    public var window: UInt32
    public init(version: UInt16 = Wire.version, collectorID: String, maxFrameBody: UInt32, maxSegmentSize: UInt64, window: UInt32) {
        self.version = version
        self.collectorID = collectorID
        self.maxFrameBody = maxFrameBody
        self.maxSegmentSize = maxSegmentSize
        self.window = window
    }
}

public struct Offer: Equatable, Sendable {
    public var tag: UInt64
    public var kind: SegmentKind
    public var key: SegmentKey
    public init(tag: UInt64, kind: SegmentKind, key: SegmentKey) {
        self.tag = tag
        self.kind = kind
        self.key = key
    }
}

public enum AnswerStatus: UInt8, Sendable {
    /// Send the segment's bytes from `offset` (0: nothing held; more: a durable partial).
    case sendFrom = 0
    /// The segment is already committed; nothing to send.
    case committed = 1
}

public enum Frame: Equatable, Sendable {
    case hello(Hello)
    case welcome(Welcome)
    case challenge(nonce: [UInt8], proof: [UInt8])
    case auth(proof: [UInt8])
    case offer(Offer)
    case answer(tag: UInt64, status: AnswerStatus, offset: UInt64)
    /// Followed on the wire by `length` raw bytes of the segment from `offset`.
    case data(tag: UInt64, offset: UInt64, length: UInt64)
    /// The collector holds `offset` bytes of the segment durably (fdatasync'ed).
    case checkpoint(tag: UInt64, offset: UInt64)
    /// The segment is committed: verified, durable and visible as `storedName`.
    case committed(tag: UInt64, storedName: String)
    case ping(UInt64)
    case pong(UInt64)
    case error(code: UInt16, tag: UInt64, message: String)

    public var type: FrameType {
        switch self {
        case .hello: return .hello
        case .challenge: return .challenge
        case .auth: return .auth
        case .welcome: return .welcome
        case .offer: return .offer
        case .answer: return .answer
        case .data: return .data
        case .checkpoint: return .checkpoint
        case .committed: return .committed
        case .ping: return .ping
        case .pong: return .pong
        case .error: return .error
        }
    }
}

public enum FrameError: Error, Equatable, CustomStringConvertible, Sendable {
    case badPreamble([UInt8])
    case tooLarge(length: UInt64, max: Int)
    case unknownType(UInt8)
    case truncated(FrameType, field: String)
    case trailingBytes(FrameType, count: Int)
    case invalidUTF8(FrameType, field: String)
    case badValue(FrameType, field: String, value: UInt64)

    public var description: String {
        switch self {
        case .badPreamble(let b):
            let shown = b.map { (0x20..<0x7f).contains($0) ? String(UnicodeScalar($0)) : "\\x" + String($0, radix: 16) }.joined()
            var hint = ""
            if b.first == 0x16 { hint = " (this looks like TLS)" }
            else if let s = String(bytes: b, encoding: .ascii), ["GET ", "POST", "HEAD", "PUT ", "PRI "].contains(s) { hint = " (this looks like HTTP)" }
            return "not a spoolship peer: expected preamble \"SPSH\", got \"\(shown)\"\(hint)"
        case .tooLarge(let n, let m): return "frame of \(n) bytes exceeds the maximum of \(m)"
        case .unknownType(let t): return "unknown frame type 0x\(String(t, radix: 16))"
        case .truncated(let t, let f): return "\(t) frame ends inside field \(f)"
        case .trailingBytes(let t, let n): return "\(t) frame has \(n) unexpected trailing bytes"
        case .invalidUTF8(let t, let f): return "\(t) frame field \(f) is not valid UTF-8"
        case .badValue(let t, let f, let v): return "\(t) frame field \(f) has invalid value \(v)"
        }
    }
}

// MARK: - Encoding

public struct FrameWriter {
    public private(set) var bytes: [UInt8] = []
    public init() {}

    mutating func u8(_ v: UInt8) { bytes.append(v) }
    mutating func u16(_ v: UInt16) { withUnsafeBytes(of: v.bigEndian) { bytes += $0 } }
    mutating func u32(_ v: UInt32) { withUnsafeBytes(of: v.bigEndian) { bytes += $0 } }
    mutating func u64(_ v: UInt64) { withUnsafeBytes(of: v.bigEndian) { bytes += $0 } }
    mutating func string(_ s: String) {
        // Strings longer than 65535 bytes cannot be framed; only an error message can be that
        // long (names are validated far below it), and it is cut at a character boundary.
        var b = Array(s.utf8)
        if b.count > Int(UInt16.max) {
            var cut = Int(UInt16.max)
            while cut > 0 && b[cut] & 0xC0 == 0x80 { cut -= 1 }
            b = Array(b.prefix(cut))
        }
        u16(UInt16(b.count))
        bytes += b
    }
    mutating func blob(_ b: [UInt8]) {
        u16(UInt16(min(b.count, Int(UInt16.max))))
        bytes += b.prefix(Int(UInt16.max))
    }

    /// Appends one whole frame (header and body) to `bytes`.
    public mutating func append(_ frame: Frame) {
        let start = bytes.count
        bytes += [0, 0, 0, 0, frame.type.rawValue]
        switch frame {
        case .hello(let h):
            u16(h.version); string(h.agentID); blob(h.auth)
        case .challenge(let nonce, let proof):
            blob(nonce); blob(proof)
        case .auth(let proof):
            blob(proof)
        case .welcome(let w):
            u16(w.version); string(w.collectorID); u32(w.maxFrameBody); u64(w.maxSegmentSize); u32(w.window)
        case .offer(let o):
            u64(o.tag); u8(o.kind.rawValue); string(o.key.spool); string(o.key.name); u64(o.key.size); u32(o.key.crc)
        case .answer(let tag, let status, let offset):
            u64(tag); u8(status.rawValue); u64(offset)
        case .data(let tag, let offset, let length):
            u64(tag); u64(offset); u64(length)
        case .checkpoint(let tag, let offset):
            u64(tag); u64(offset)
        case .committed(let tag, let name):
            u64(tag); string(name)
        case .ping(let n), .pong(let n):
            u64(n)
        case .error(let code, let tag, let message):
            u16(code); u64(tag); string(message)
        }
        let length = UInt32(bytes.count - start - Wire.headerSize)
        withUnsafeBytes(of: length.bigEndian) { raw in
            for i in 0..<4 { bytes[start + i] = raw[i] }
        }
    }

    public static func encode(_ frame: Frame) -> [UInt8] {
        var w = FrameWriter()
        w.append(frame)
        return w.bytes
    }
}

// MARK: - Decoding

struct BodyReader {
    let type: FrameType
    let body: ArraySlice<UInt8>
    var pos: Int

    init(_ type: FrameType, _ body: ArraySlice<UInt8>) {
        self.type = type
        self.body = body
        self.pos = body.startIndex
    }

    mutating func take(_ n: Int, _ field: String) throws -> ArraySlice<UInt8> {
        guard body.endIndex - pos >= n else { throw FrameError.truncated(type, field: field) }
        defer { pos += n }
        return body[pos..<pos + n]
    }
    mutating func uint<T: FixedWidthInteger>(_ t: T.Type, _ field: String) throws -> T {
        var v: T = 0
        for b in try take(MemoryLayout<T>.size, field) { v = (v << 8) | T(b) }
        return v
    }
    mutating func string(_ field: String) throws -> String {
        let n = Int(try uint(UInt16.self, field))
        let b = try take(n, field)
        guard let s = String(validating: b, as: UTF8.self) else { throw FrameError.invalidUTF8(type, field: field) }
        return s
    }
    mutating func blob(_ field: String) throws -> [UInt8] {
        let n = Int(try uint(UInt16.self, field))
        return Array(try take(n, field))
    }
    func finish() throws {
        if pos != body.endIndex { throw FrameError.trailingBytes(type, count: body.endIndex - pos) }
    }
}

public enum FrameCodec {
    /// Checks a frame header; returns the frame type and body length.
    public static func parseHeader<C: Collection>(_ header: C, maxBody: Int) throws -> (FrameType, Int)
    where C.Element == UInt8 {
        precondition(header.count >= Wire.headerSize)
        var length: UInt64 = 0
        var i = header.startIndex
        for _ in 0..<4 {
            length = (length << 8) | UInt64(header[i])
            i = header.index(after: i)
        }
        let rawType = header[i]
        guard let type = FrameType(rawValue: rawType) else { throw FrameError.unknownType(rawType) }
        guard length <= UInt64(maxBody) else { throw FrameError.tooLarge(length: length, max: maxBody) }
        return (type, Int(length))
    }

    public static func parseBody(_ type: FrameType, _ body: ArraySlice<UInt8>) throws -> Frame {
        var r = BodyReader(type, body)
        let frame: Frame
        switch type {
        case .hello:
            frame = .hello(Hello(version: try r.uint(UInt16.self, "version"), agentID: try r.string("agent_id"), auth: try r.blob("auth")))
        case .challenge:
            frame = .challenge(nonce: try r.blob("nonce"), proof: try r.blob("proof"))
        case .auth:
            frame = .auth(proof: try r.blob("proof"))
        case .welcome:
            frame = .welcome(Welcome(
                version: try r.uint(UInt16.self, "version"), collectorID: try r.string("collector_id"),
                maxFrameBody: try r.uint(UInt32.self, "max_frame"), maxSegmentSize: try r.uint(UInt64.self, "max_segment"),
                window: try r.uint(UInt32.self, "window")))
        case .offer:
            let tag = try r.uint(UInt64.self, "tag")
            let rawKind = try r.uint(UInt8.self, "kind")
            guard let kind = SegmentKind(rawValue: rawKind) else { throw FrameError.badValue(type, field: "kind", value: UInt64(rawKind)) }
            let spool = try r.string("spool")
            let name = try r.string("name")
            let size = try r.uint(UInt64.self, "size")
            let crc = try r.uint(UInt32.self, "crc32")
            frame = .offer(Offer(tag: tag, kind: kind, key: SegmentKey(spool: spool, name: name, size: size, crc: crc)))
        case .answer:
            let tag = try r.uint(UInt64.self, "tag")
            let raw = try r.uint(UInt8.self, "status")
            guard let status = AnswerStatus(rawValue: raw) else { throw FrameError.badValue(type, field: "status", value: UInt64(raw)) }
            frame = .answer(tag: tag, status: status, offset: try r.uint(UInt64.self, "offset"))
        case .data:
            frame = .data(tag: try r.uint(UInt64.self, "tag"), offset: try r.uint(UInt64.self, "offset"), length: try r.uint(UInt64.self, "length"))
        case .checkpoint:
            frame = .checkpoint(tag: try r.uint(UInt64.self, "tag"), offset: try r.uint(UInt64.self, "offset"))
        case .committed:
            frame = .committed(tag: try r.uint(UInt64.self, "tag"), storedName: try r.string("stored_name"))
        case .ping:
            frame = .ping(try r.uint(UInt64.self, "nonce"))
        case .pong:
            frame = .pong(try r.uint(UInt64.self, "nonce"))
        case .error:
            frame = .error(code: try r.uint(UInt16.self, "code"), tag: try r.uint(UInt64.self, "tag"), message: try r.string("message"))
        }
        try r.finish()
        return frame
    }
}

/// An incremental decoder: feed it bytes as they arrive, in slices of any size, and take whole
/// frames out. A DATA frame's payload is not consumed: after `.data(_, _, length)` the caller
/// takes `length` payload bytes, first from `takeBuffered(upTo:)`, then from the stream.
public struct FrameDecoder: Sendable {
    public let maxBody: Int
    private var buffer: [UInt8] = []
    private var start = 0
    private var expectPreamble: Bool

    public init(maxBody: Int = Wire.defaultMaxFrameBody, expectPreamble: Bool = true) {
        self.maxBody = maxBody
        self.expectPreamble = expectPreamble
    }

    public var bufferedCount: Int { buffer.count - start }

    public mutating func feed<C: Collection>(_ bytes: C) where C.Element == UInt8 {
        if start > 0 && start == buffer.count {
            buffer.removeAll(keepingCapacity: true)
            start = 0
        } else if start > 64 * 1024 {
            buffer.removeFirst(start)
            start = 0
        }
        buffer.append(contentsOf: bytes)
    }

    /// The next whole frame, or nil when more bytes are needed. Throws on malformed input;
    /// after an error the stream cannot be resynchronised and must be closed.
    public mutating func next() throws -> Frame? {
        if expectPreamble {
            let have = min(bufferedCount, Wire.preamble.count)
            let got = Array(buffer[start..<start + have])
            if got != Array(Wire.preamble.prefix(have)) { throw FrameError.badPreamble(got) }
            if have < Wire.preamble.count { return nil }
            start += Wire.preamble.count
            expectPreamble = false
        }
        guard bufferedCount >= Wire.headerSize else { return nil }
        let (type, length) = try FrameCodec.parseHeader(buffer[start..<start + Wire.headerSize], maxBody: maxBody)
        guard bufferedCount >= Wire.headerSize + length else { return nil }
        let bodyStart = start + Wire.headerSize
        let frame = try FrameCodec.parseBody(type, buffer[bodyStart..<bodyStart + length])
        start = bodyStart + length
        return frame
    }

    /// Takes up to `n` buffered bytes that follow the last frame (DATA payload).
    public mutating func takeBuffered(upTo n: Int) -> ArraySlice<UInt8> {
        let k = min(n, bufferedCount)
        defer { start += k }
        return buffer[start..<start + k]
    }
}
