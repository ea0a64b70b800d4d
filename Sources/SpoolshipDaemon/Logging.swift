import CSpoolshipSystemd
import Foundation
import Glibc
import Logging
import SpoolshipIO

public enum SpoolshipLogging {
    /// Says, once at start, how this host lets the daemon open files beneath a directory
    /// without following symlinks (`Files.beneathRoute`): openat2, or the per-component route
    /// where openat2 is refused (a seccomp filter such as systemd's RestrictSUIDSGID=, or a
    /// kernel before 5.6). Both keep the same guarantee.
    public static func logFileOpeningRoute(_ logger: Logger) {
        let route = Files.beneathRoute
        switch route {
        case .openat2:
            logger.info("files beneath a directory are opened with openat2", metadata: ["route": "openat2"])
        case .perComponent(let e):
            logger.notice("openat2 is refused here; files beneath a directory are opened one path component at a time with O_NOFOLLOW",
                          metadata: ["route": "per-component", "error": "openat2: \(String(cString: strerror(e))) (errno \(e))"])
        }
    }

    /// Under journald (standard error is the journal stream named by JOURNAL_STREAM), logs go
    /// to the journal with structured fields; otherwise to standard error as readable lines.
    /// The level can be changed later (a reload) through `level`.
    public static func bootstrap(level: Logger.Level) {
        self.level.withLock { $0 = level }
        let journal = underJournald()
        LoggingSystem.bootstrap { label in
            if journal { return JournalLogHandler(label: label) }
            return LevelledStreamHandler(inner: StreamLogHandler.standardError(label: label))
        }
    }

    /// The level every handler uses; a reload may change it.
    public static let level = Locked<Logger.Level>(.info)

    public static func setLevel(_ l: Logger.Level) { level.withLock { $0 = l } }

    /// Whether standard error is connected to the journal: JOURNAL_STREAM holds "DEV:INO" of
    /// the stream systemd connected, and it must be our standard error (not a pipe that a
    /// child inherited the variable through).
    public static func underJournald() -> Bool {
        guard let v = ProcessInfo.processInfo.environment["JOURNAL_STREAM"] else { return false }
        let parts = v.split(separator: ":")
        guard parts.count == 2, let dev = UInt64(parts[0]), let ino = UInt64(parts[1]) else { return false }
        var st = stat()
        guard fstat(STDERR_FILENO, &st) == 0 else { return false }
        return UInt64(st.st_dev) == dev && UInt64(st.st_ino) == ino
    }
}

/// What a peer or a file name supplies reaches log lines and journal fields only escaped: a
/// name with a newline must not forge a log line, nor a terminal escape reach an operator's
/// terminal. Control characters (C0, DEL, C1) and the bidirectional overrides become `\n`,
/// `\t`, `\r`, `\xNN` or `\u{NNNN}` (`FileName.escape`); everything else, non-ASCII letters
/// and backslashes included, stays as it is.
public enum LogText {
    public static func escaped(_ s: String) -> String {
        guard s.unicodeScalars.contains(where: FileName.needsEscape) else { return s }
        var out = ""
        out.reserveCapacity(s.utf8.count + 8)
        for u in s.unicodeScalars { out += FileName.escape(u) }
        return out
    }

    /// Every value escaped (an array or a dictionary as its description), but text that is
    /// escaped already (`EscapedText`, for a name that is not valid UTF-8).
    public static func escaped(_ m: Logger.Metadata) -> Logger.Metadata {
        m.mapValues(escaped)
    }

    public static func escaped(_ v: Logger.Metadata.Value) -> Logger.Metadata.Value {
        if case .stringConvertible(let c) = v, c is EscapedText { return v }
        return .string(escaped(v.description))
    }
}

/// swift-log's stream handler, with the level shared (and changeable at reload), and every
/// message and value escaped (`LogText`).
public struct LevelledStreamHandler: LogHandler {
    public var inner: StreamLogHandler
    public var metadata: Logger.Metadata {
        get { inner.metadata }
        set { inner.metadata = LogText.escaped(newValue) }
    }
    public var logLevel: Logger.Level {
        get { SpoolshipLogging.level.withLock { $0 } }
        set { SpoolshipLogging.setLevel(newValue) }
    }
    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { inner[metadataKey: key] }
        set { inner[metadataKey: key] = newValue.map(LogText.escaped) }
    }
    public func log(event: LogEvent) {
        guard event.level >= logLevel else { return }
        var escaped = event
        escaped.message = Logger.Message(stringLiteral: LogText.escaped(event.message.description))
        escaped.metadata = event.metadata.map(LogText.escaped)
        TerminalProgress.aroundLogLine {
            inner.log(event: escaped)
        }
    }
}

/// Writes each message to the journal (sd_journal_sendv) with MESSAGE, PRIORITY,
/// SYSLOG_IDENTIFIER and the code location, and every metadata key as a field of its own:
/// upper-cased, with characters outside [A-Z0-9_] as '_' (`agent.id` becomes AGENT_ID,
/// `spool.name` SPOOL_NAME, `segment.name` SEGMENT_NAME, `peer` PEER, `offset` OFFSET).
public struct JournalLogHandler: LogHandler {
    public let label: String
    public var metadata: Logger.Metadata = [:]
    public var logLevel: Logger.Level {
        get { SpoolshipLogging.level.withLock { $0 } }
        set { SpoolshipLogging.setLevel(newValue) }
    }

    public init(label: String) { self.label = label }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public static func priority(_ l: Logger.Level) -> Int {
        switch l {
        case .trace, .debug: return 7
        case .info: return 6
        case .notice: return 5
        case .warning: return 4
        case .error: return 3
        case .critical: return 2
        }
    }

    /// A metadata key as a journal field name.
    public static func fieldName(_ key: String) -> String {
        var name = String(key.uppercased().map { ($0.isASCII && ($0.isLetter || $0.isNumber)) ? $0 : "_" })
        while name.hasPrefix("_") { name.removeFirst() }
        if name.isEmpty || name.first!.isNumber { name = "F" + name }
        return String(name.prefix(64))
    }

    public func log(event: LogEvent) {
        let (level, message, file, function, line) = (event.level, event.message, event.file, event.function, event.line)
        guard level >= logLevel else { return }
        var all = metadata
        if let e = event.metadata { all.merge(e) { $1 } }
        var fields = [
            "MESSAGE=\(LogText.escaped(message.description))",
            "PRIORITY=\(Self.priority(level))",
            "SYSLOG_IDENTIFIER=\(label)",
            "CODE_FILE=\(file)",
            "CODE_LINE=\(line)",
            "CODE_FUNC=\(function)",
        ]
        for (k, v) in all.sorted(by: { $0.key < $1.key }) { fields.append("\(Self.fieldName(k))=\(LogText.escaped(v))") }
        // One buffer holds every field; each field is one iovec into it (a value may hold
        // newlines: sd_journal_sendv encodes it).
        var bytes: [UInt8] = []
        var ranges: [Range<Int>] = []
        for f in fields {
            let start = bytes.count
            bytes += Array(f.utf8)
            ranges.append(start..<bytes.count)
        }
        bytes.withUnsafeMutableBytes { p in
            var iov = ranges.map { iovec(iov_base: p.baseAddress! + $0.lowerBound, iov_len: $0.count) }
            _ = sd_journal_sendv(&iov, Int32(iov.count))
        }
    }
}

extension Logger.Level {
    public static func parse(_ s: String) -> Logger.Level? { Logger.Level(rawValue: s.lowercased()) }
}
