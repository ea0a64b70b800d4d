import Glibc

/// File names as the kernel has them: bytes, of which only some are valid UTF-8.
public enum FileName {
    /// The name as a String, or nil when its bytes are not valid UTF-8 (Swift would replace
    /// the bad bytes, and the String would then name another file, or none).
    public static func decode(_ raw: [UInt8]) -> String? {
        var it = raw.makeIterator()
        var utf8 = UTF8()
        var out = ""
        out.reserveCapacity(raw.count)
        while true {
            switch utf8.decode(&it) {
            case .scalarValue(let u): out.unicodeScalars.append(u)
            case .emptyInput: return out
            case .error: return nil
            }
        }
    }

    /// A name for people and logs: what no log line may carry escaped, as `LogText` does for
    /// every String (control characters as `\n`, `\t`, `\r` or `\xNN`, the bidirectional
    /// overrides as `\u{NNNN}`), and each byte that is not valid UTF-8 as `\xNN`. A backslash
    /// stays as it is: nothing can be forged with one, and escaping it would double the
    /// backslashes of this very escaping wherever the text is logged again.
    public static func display(_ raw: [UInt8]) -> String {
        var out = ""
        var i = 0
        while i < raw.count {
            // Scalar by scalar; a byte that starts no valid sequence is shown alone.
            var rest = raw[i...].makeIterator()
            var utf8 = UTF8()
            switch utf8.decode(&rest) {
            case .scalarValue(let u):
                out += escape(u)
                i += UTF8.width(u)
            case .emptyInput:
                i = raw.count
            case .error:
                out += "\\x" + hex(UInt32(raw[i]), 2)
                i += 1
            }
        }
        return out
    }

    /// One scalar as a log shows it.
    public static func escape(_ u: Unicode.Scalar) -> String {
        guard needsEscape(u) else { return String(u) }
        switch u {
        case "\n": return "\\n"
        case "\t": return "\\t"
        case "\r": return "\\r"
        default: return u.value < 0x100 ? "\\x" + hex(u.value, 2) : "\\u{" + hex(u.value, 4) + "}"
        }
    }

    public static func needsEscape(_ u: Unicode.Scalar) -> Bool {
        let v = u.value
        return v < 0x20 || (0x7F...0x9F).contains(v) || (0x202A...0x202E).contains(v) || (0x2066...0x2069).contains(v)
    }

    static func hex(_ v: UInt32, _ width: Int) -> String {
        let h = String(v, radix: 16, uppercase: true)
        return String(repeating: "0", count: max(0, width - h.count)) + h
    }
}

/// Text already escaped for a log (`FileName.display`): log handlers take it as it is.
public struct EscapedText: CustomStringConvertible, Sendable {
    public let description: String
    public init(_ escaped: String) { description = escaped }
}

extension Files {
    /// One entry of a directory: its name's bytes, the name if it is valid UTF-8, and the type
    /// readdir(3) reports (DT_UNKNOWN on file systems that do not say).
    public struct DirectoryEntry: Sendable {
        public var rawName: [UInt8]
        public var name: String?
        public var type: UInt8
        public var display: String { name ?? FileName.display(rawName) }
    }

    /// The entries of the directory held by `dir` but `.` and `..` (names as bytes, in no
    /// particular order: FileManager drops or alters names that are not valid UTF-8), read
    /// through a descriptor of its own opened beneath `dir` (openat(2) of ".", then
    /// fdopendir(3)): the listing is of the directory the caller holds, whatever its path
    /// names now, `dir`'s own offset is left alone, and two threads may list one directory at
    /// once.
    public static func entries(of dir: OwnedFD) throws -> [DirectoryEntry] {
        let fd = try syscall("openat", dir.label) { openat(dir.raw, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC) }
        guard let d = fdopendir(fd) else {
            let e = Glibc.errno
            Glibc.close(fd)
            throw SyscallError(call: "fdopendir", path: dir.label, errno: e)
        }
        defer { closedir(d) }  // closes `fd` too
        var out: [DirectoryEntry] = []
        while true {
            Glibc.errno = 0
            guard let e = readdir(d) else {
                if Glibc.errno != 0 { throw SyscallError(call: "readdir", path: dir.label, errno: Glibc.errno) }
                return out
            }
            let raw: [UInt8] = withUnsafeBytes(of: e.pointee.d_name) { p in
                Array(p.bindMemory(to: UInt8.self).prefix { $0 != 0 })
            }
            if raw == [0x2E] || raw == [0x2E, 0x2E] { continue }
            out.append(DirectoryEntry(rawName: raw, name: FileName.decode(raw), type: e.pointee.d_type))
        }
    }

    /// The names (valid UTF-8 only) in the directory held by `dir`, sorted.
    public static func names(of dir: OwnedFD) throws -> [String] {
        try entries(of: dir).compactMap(\.name).sorted()
    }
}
