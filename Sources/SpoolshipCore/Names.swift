/// Validation of every name that crosses the wire: agent ids, spool names and segment names.
///
/// A name from the wire never becomes a path by concatenation (the collector opens files
/// relative to directory handles, with symlinks refused), but it must still be one plain
/// directory entry: these checks refuse anything else before any file is touched.
public enum NameError: Error, Equatable, CustomStringConvertible, Sendable {
    case empty(what: String)
    case tooLong(what: String, bytes: Int, max: Int)
    case hasSlash(what: String)
    case hasNUL(what: String)
    case hasControl(what: String, byte: UInt8)
    case dotName(what: String)
    case hidden(what: String)
    case badCharacter(what: String, character: Character)

    public var description: String {
        switch self {
        case .empty(let w): return "\(w) is empty"
        case .tooLong(let w, let n, let m): return "\(w) is \(n) bytes long, more than the \(m) allowed"
        case .hasSlash(let w): return "\(w) contains '/'"
        case .hasNUL(let w): return "\(w) contains a NUL byte"
        case .hasControl(let w, let b): return "\(w) contains the control byte 0x\(String(b, radix: 16))"
        case .dotName(let w): return "\(w) is '.' or '..'"
        case .hidden(let w): return "\(w) starts with '.'"
        case .badCharacter(let w, let c): return "\(w) contains \(String(reflecting: String(c))), outside [A-Za-z0-9._-]"
        }
    }
}

public enum Names {
    /// Longest name of one directory entry on Linux file systems (NAME_MAX).
    public static let maxSegmentNameBytes = 255
    public static let maxIdentifierBytes = 64

    /// A segment (file) name: one directory entry, 1...255 bytes of UTF-8, no '/', NUL or
    /// control bytes, not '.' or '..', and not hidden (a leading '.' is an in-progress file on
    /// the agent and the collector's private area on the collector).
    public static func validateSegmentName(_ name: String, what: String = "segment name") throws {
        let bytes = Array(name.utf8)
        if bytes.isEmpty { throw NameError.empty(what: what) }
        if bytes.count > maxSegmentNameBytes { throw NameError.tooLong(what: what, bytes: bytes.count, max: maxSegmentNameBytes) }
        if name == "." || name == ".." { throw NameError.dotName(what: what) }
        for b in bytes {
            if b == 0 { throw NameError.hasNUL(what: what) }
            if b == UInt8(ascii: "/") { throw NameError.hasSlash(what: what) }
            if b < 0x20 || b == 0x7f { throw NameError.hasControl(what: what, byte: b) }
        }
        if bytes[0] == UInt8(ascii: ".") { throw NameError.hidden(what: what) }
    }

    /// An agent id or a spool name: 1...64 characters of [A-Za-z0-9._-], not starting with '.'.
    /// These name directories under the data dir, so they are kept to a portable set.
    public static func validateIdentifier(_ id: String, what: String) throws {
        if id.isEmpty { throw NameError.empty(what: what) }
        let n = id.utf8.count
        if n > maxIdentifierBytes { throw NameError.tooLong(what: what, bytes: n, max: maxIdentifierBytes) }
        if id == "." || id == ".." { throw NameError.dotName(what: what) }
        for c in id {
            guard c.isASCII, c.isLetter || c.isNumber || c == "." || c == "_" || c == "-" else {
                if c == "/" { throw NameError.hasSlash(what: what) }
                if c == "\0" { throw NameError.hasNUL(what: what) }
                throw NameError.badCharacter(what: what, character: c)
            }
        }
        if id.hasPrefix(".") { throw NameError.hidden(what: what) }
    }

    /// Whether a file in a blob spool is still in progress: dotfiles and `*.tmp` are ignored
    /// until they are renamed.
    public static func isInProgress(_ name: String) -> Bool {
        name.hasPrefix(".") || name.hasSuffix(".tmp")
    }

    /// The name a committed file takes when `name` is already taken by a different file:
    /// `name~1`, `name~2`, ... (attempt 0 is the name itself). A name that is reused never
    /// overwrites a committed file.
    public static func alternateName(_ name: String, attempt: Int) -> String {
        attempt == 0 ? name : "\(name)~\(attempt)"
    }
}

/// What identifies a segment across connections, restarts and lost agent state: where it goes,
/// what it is called, and its exact contents (size and CRC-32 computed at seal time).
public struct SegmentKey: Hashable, Sendable, Codable {
    public var spool: String
    public var name: String
    public var size: UInt64
    public var crc: UInt32

    public init(spool: String, name: String, size: UInt64, crc: UInt32) {
        self.spool = spool
        self.name = name
        self.size = size
        self.crc = crc
    }

    /// The file name of this segment's partial data in the collector's hidden area: a
    /// 128-bit hash of the whole key in hex, so that nothing from the wire reaches a path.
    public var partialFileName: String {
        var bytes = Array(spool.utf8)
        bytes.append(0)
        bytes += Array(name.utf8)
        bytes.append(0)
        withUnsafeBytes(of: size.bigEndian) { bytes += $0 }
        withUnsafeBytes(of: crc.bigEndian) { bytes += $0 }
        return hex64(fnv1a64(bytes, basis: 0xcbf2_9ce4_8422_2325))
            + hex64(fnv1a64(bytes, basis: 0x6c62_272e_07bb_0142)) + ".part"
    }
}

func fnv1a64(_ bytes: [UInt8], basis: UInt64) -> UInt64 {
    var h = basis
    for b in bytes {
        h ^= UInt64(b)
        h = h &* 0x0000_0100_0000_01b3
    }
    return h
}
