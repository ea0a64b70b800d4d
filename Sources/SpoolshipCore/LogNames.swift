import Glibc

/// Names in log spools: which files are streams, what their segments are called, and the
/// `--logs NAME=DIR[:GLOB]` syntax.
public enum LogNames {
    /// Digits of a segment's sequence number: zero-padded so that name order is stream order
    /// (at one rotation a second, 10 digits last three centuries).
    public static let seqDigits = 10
    public static let defaultGlob = "*.log"
    /// The hidden directory inside a log spool that holds rotated files until they are shipped.
    public static let rotatedDirName = ".spoolship"

    /// `NAME.<SEQ>` or `NAME.<SEQ>.gz`: the name of a segment of the stream `stream`, in the
    /// spool's rotated directory and at the collector.
    public static func segmentName(stream: String, seq: UInt64, compressed: Bool) -> String {
        let digits = String(seq)
        let padded = String(repeating: "0", count: max(0, seqDigits - digits.count)) + digits
        return "\(stream).\(padded)" + (compressed ? ".gz" : "")
    }

    public struct Parsed: Equatable, Sendable {
        public var stream: String
        public var seq: UInt64
        public var compressed: Bool
    }

    /// The stream, sequence number and compression of a segment name; nil for any other name.
    public static func parse(segmentName: String) -> Parsed? {
        var rest = Substring(segmentName)
        let compressed = rest.hasSuffix(".gz")
        if compressed { rest = rest.dropLast(3) }
        guard let dot = rest.lastIndex(of: ".") else { return nil }
        let digits = rest[rest.index(after: dot)...]
        guard digits.count == seqDigits, digits.allSatisfy({ $0.isASCII && $0.isNumber }), let seq = UInt64(digits) else { return nil }
        let stream = String(rest[..<dot])
        guard !stream.isEmpty else { return nil }
        return Parsed(stream: stream, seq: seq, compressed: compressed)
    }

    /// Whether a file name is a stream of a spool with this glob (fnmatch(3); a leading '.'
    /// must be matched explicitly, so hidden files are never streams unless asked for).
    public static func matches(_ glob: String, _ name: String) -> Bool {
        if name.hasPrefix(".") || name.hasSuffix(".tmp") { return false }
        return fnmatch(glob, name, FNM_PERIOD) == 0
    }

    /// Checks a glob: one file-name pattern (no '/'), not empty.
    public static func validateGlob(_ glob: String) throws {
        if glob.isEmpty { throw NameError.empty(what: "glob") }
        if glob.contains("/") { throw NameError.hasSlash(what: "glob '\(glob)'") }
        if glob.utf8.contains(0) { throw NameError.hasNUL(what: "glob") }
    }

    /// Splits `NAME=DIR[:GLOB]`. The glob is what follows the last ':' when that part has no
    /// '/', so a directory may contain ':' as long as a glob is then given.
    public static func parseLogSpoolArgument(_ arg: String) throws -> (name: String, directory: String, glob: String) {
        guard let eq = arg.firstIndex(of: "="), eq != arg.startIndex else {
            throw SpoolArgumentError("--logs must be NAME=DIR[:GLOB], got '\(arg)'")
        }
        let name = String(arg[..<eq])
        var dir = String(arg[arg.index(after: eq)...])
        var glob = defaultGlob
        if let colon = dir.lastIndex(of: ":"), !dir[dir.index(after: colon)...].contains("/") {
            glob = String(dir[dir.index(after: colon)...])
            dir = String(dir[..<colon])
        }
        guard !dir.isEmpty else { throw SpoolArgumentError("--logs \(arg): the directory is empty") }
        do {
            try Names.validateIdentifier(name, what: "spool name")
            try validateGlob(glob)
        } catch {
            throw SpoolArgumentError("--logs \(arg): \(error)")
        }
        return (name, dir, glob)
    }
}

public struct SpoolArgumentError: Error, CustomStringConvertible, Equatable {
    public var description: String
    public init(_ d: String) { description = d }
}

/// Sizes in settings.
public enum ByteSize {
    /// "1048576", "512K", "512KiB", "64M", "64MiB", "1G", "1GiB" (binary multiples).
    public static func parse(_ s: String) -> UInt64? {
        let t = s.trimmingWhitespace()
        let digits = t.prefix { $0.isASCII && $0.isNumber }
        guard !digits.isEmpty, let n = UInt64(digits), n > 0 else { return nil }
        let unit = t.dropFirst(digits.count).trimmingWhitespace().lowercased()
        let shift: UInt64
        switch unit {
        case "", "b": shift = 0
        case "k", "kib", "kb": shift = 10
        case "m", "mib", "mb": shift = 20
        case "g", "gib", "gb": shift = 30
        default: return nil
        }
        guard n <= UInt64.max >> shift else { return nil }
        return n << shift
    }
}


extension StringProtocol {
    func trimmingWhitespace() -> String {
        String(drop { $0 == " " || $0 == "\t" }.reversed().drop { $0 == " " || $0 == "\t" }.reversed())
    }
}
