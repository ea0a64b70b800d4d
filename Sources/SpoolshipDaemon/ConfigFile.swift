import Foundation
import Glibc
import SpoolshipCore
import SpoolshipIO
import TOMLKit

/// A configuration error: names the file, and the line or key, and what was expected.
public struct ConfigError: Error, CustomStringConvertible {
    public var description: String
    init(_ file: String, _ what: String) { description = "\(file): \(what)" }
}

/// Reads one TOML table strictly: every key must be known, every value of the expected type.
struct TableReader {
    let file: String
    let table: TOMLTable
    /// Where the table is, for messages: "" for the top level, "[[logs]] #2".
    let place: String
    private(set) var known: Set<String> = []

    init(file: String, table: TOMLTable, place: String) {
        self.file = file
        self.table = table
        self.place = place
    }

    private func where_(_ key: String) -> String { place.isEmpty ? "key '\(key)'" : "key '\(key)' in \(place)" }

    func fail(_ key: String, _ expected: String) -> ConfigError {
        ConfigError(file, "\(where_(key)): expected \(expected)")
    }

    mutating func string(_ key: String) throws -> String? {
        known.insert(key)
        guard let v = table[key] else { return nil }
        guard let s = v.string else { throw fail(key, "a string, found \(v.type)") }
        return s
    }

    mutating func bool(_ key: String) throws -> Bool? {
        known.insert(key)
        guard let v = table[key] else { return nil }
        guard let b = v.bool else { throw fail(key, "true or false, found \(v.type)") }
        return b
    }

    mutating func seconds(_ key: String) throws -> Double? {
        known.insert(key)
        guard let v = table[key] else { return nil }
        let d = v.int.map(Double.init) ?? v.double
        guard let d = d, d > 0, d.isFinite else { throw fail(key, "a positive number of seconds") }
        return d
    }

    mutating func int(_ key: String, in range: ClosedRange<Int>) throws -> Int? {
        known.insert(key)
        guard let v = table[key] else { return nil }
        guard let i = v.int, range.contains(i) else { throw fail(key, "an integer from \(range.lowerBound) to \(range.upperBound)") }
        return i
    }

    /// A size: an integer of bytes, or a string with a binary suffix ("512KiB", "64MiB", "1G").
    mutating func bytes(_ key: String) throws -> UInt64? {
        known.insert(key)
        guard let v = table[key] else { return nil }
        if let i = v.int, i > 0 { return UInt64(i) }
        if let s = v.string, let b = ByteSize.parse(s) { return b }
        throw fail(key, "a positive size in bytes, as an integer or a string like \"64MiB\"")
    }

    mutating func tables(_ key: String) throws -> [TOMLTable] {
        known.insert(key)
        guard let v = table[key] else { return [] }
        guard let a = v.array else { throw fail(key, "an array of tables ([[\(key)]])") }
        return try a.map { e in
            guard let t = e.table else { throw fail(key, "an array of tables ([[\(key)]])") }
            return t
        }
    }

    /// Refuses any key that was not asked for.
    func rejectUnknown() throws {
        for k in table.keys where !known.contains(k) {
            throw ConfigError(file, "unknown \(where_(k)); known keys here: \(known.sorted().joined(separator: ", "))")
        }
    }
}

/// Reads and parses a TOML file; errors name the file, and the line and column of a syntax error.
func parseTOML(path: String) throws -> TOMLTable {
    let text: String
    do {
        text = try String(contentsOfFile: path, encoding: .utf8)
    } catch {
        throw ConfigError(path, "cannot read the file: \(error.localizedDescription)")
    }
    do {
        return try TOMLTable(string: text)
    } catch let e as TOMLParseError {
        throw ConfigError(path, "line \(e.source.begin.line), column \(e.source.begin.column): \(e.description)")
    }
}

extension TableReader {
    /// `control-socket`: a socket path, or "none".
    mutating func controlSocket() throws -> String? {
        let p = try string("control-socket")
        if let p = p, !ControlSocketPath.isValid(p) {
            throw fail("control-socket", "a socket path of 1 to 107 bytes, or \"none\"")
        }
        return p
    }

    /// `metrics-listen` (HOST:PORT) and `metrics-port-file`.
    mutating func metrics() throws -> (String?, String?) {
        let l = try string("metrics-listen")
        if let l = l, Endpoint(l) == nil { throw fail("metrics-listen", "HOST:PORT, got '\(l)'") }
        return (l, try string("metrics-port-file"))
    }

    mutating func logLevel() throws -> String? {
        let l = try string("log-level")
        if let l = l, !["trace", "debug", "info", "notice", "warning", "error", "critical"].contains(l) {
            throw fail("log-level", "one of trace, debug, info, notice, warning, error, critical; got '\(l)'")
        }
        return l
    }
}

/// What a collector's config file says. Every field is optional: flags fill in or override.
public struct CollectorFileConfig {
    public var listen: String?
    public var dataDir: String?
    public var portFile: String?
    public var maxSegmentSize: UInt64?
    public var handshakeTimeout: Double?
    public var idleTimeout: Double?
    public var checkpointBytes: UInt64?
    public var partialMaxAge: Double?
    public var logLevel: String?
    public var agents: String?
    public var maxConnections: Int?
    public var freeSpaceReserve: UInt64?
    public var maxPartialBytes: UInt64?
    public var maxFrameBody: UInt64?
    public var controlSocket: String?
    public var metricsListen: String?
    public var metricsPortFile: String?

    public init() {}

    public static let defaultPath = "/etc/spoolship/collector.toml"

    public static func load(path: String) throws -> CollectorFileConfig {
        var top = TableReader(file: path, table: try parseTOML(path: path), place: "")
        var c = CollectorFileConfig()
        c.listen = try top.string("listen")
        if let l = c.listen, Endpoint(l) == nil { throw top.fail("listen", "HOST:PORT, got '\(l)'") }
        c.dataDir = try top.string("data-dir")
        c.portFile = try top.string("port-file")
        c.maxSegmentSize = try top.bytes("max-segment-size")
        c.handshakeTimeout = try top.seconds("handshake-timeout")
        c.idleTimeout = try top.seconds("idle-timeout")
        c.checkpointBytes = try top.bytes("checkpoint-bytes")
        c.partialMaxAge = try top.seconds("partial-max-age")
        c.logLevel = try top.logLevel()
        c.agents = try top.string("agents")
        c.maxConnections = try top.int("max-connections", in: 1...1_000_000)
        c.freeSpaceReserve = try top.bytes("free-space-reserve")
        c.maxPartialBytes = try top.bytes("max-partial-bytes")
        c.maxFrameBody = try top.bytes("max-frame-body")
        c.controlSocket = try top.controlSocket()
        (c.metricsListen, c.metricsPortFile) = try top.metrics()
        try top.rejectUnknown()
        return c
    }
}

/// The config file to read: the one given, else the default path when it exists.
public func configPath(given: String?, defaultPath: String) -> String? {
    if let g = given { return g }
    return FileManager.default.fileExists(atPath: defaultPath) ? defaultPath : nil
}

/// What an agent's config file says. Every field is optional: flags fill in or override.
public struct AgentFileConfig {
    public var collector: String?
    public var agentID: String?
    public var stateDir: String?
    public var archiveDir: String?
    public var ioTimeout: Double?
    public var timeout: Double?
    public var logLevel: String?
    public var secretFile: String?
    public var controlSocket: String?
    public var metricsListen: String?
    public var metricsPortFile: String?
    /// Defaults for log spools that do not set their own.
    public var rotateSize: UInt64?
    public var rotateAge: Double?
    public var spools: [SpoolConfig] = []
    /// Per log spool, which rotation settings the file set itself (the flags' defaults do not
    /// override those).
    public var ownRotateSize: Set<String> = []
    public var ownRotateAge: Set<String> = []
    /// The default settle time of blob spools, and the spools that set their own.
    public var settle: Double?
    public var ownSettle: Set<String> = []

    public init() {}

    public static let defaultPath = "/etc/spoolship/agent.toml"

    public static func load(path: String) throws -> AgentFileConfig {
        var top = TableReader(file: path, table: try parseTOML(path: path), place: "")
        var c = AgentFileConfig()
        c.collector = try top.string("collector")
        if let col = c.collector, Endpoint(col) == nil { throw top.fail("collector", "HOST:PORT, got '\(col)'") }
        c.agentID = try top.string("agent-id")
        if let id = c.agentID {
            do { try Names.validateIdentifier(id, what: "agent id") } catch { throw top.fail("agent-id", "1-64 of [A-Za-z0-9._-] (\(error))") }
        }
        c.stateDir = try top.string("state-dir")
        c.archiveDir = try top.string("archive-dir")
        c.ioTimeout = try top.seconds("io-timeout")
        c.timeout = try top.seconds("timeout")
        c.logLevel = try top.logLevel()
        c.secretFile = try top.string("secret-file")
        c.controlSocket = try top.controlSocket()
        (c.metricsListen, c.metricsPortFile) = try top.metrics()
        c.rotateSize = try top.bytes("rotate-size")
        c.rotateAge = try top.seconds("rotate-age")
        c.settle = try top.seconds("settle")
        for (i, t) in try top.tables("spool").enumerated() {
            var r = TableReader(file: path, table: t, place: "[[spool]] #\(i + 1)")
            let (name, dir) = try nameAndDir(&r)
            let settle = try r.seconds("settle")
            if settle != nil { c.ownSettle.insert(name) }
            try r.rejectUnknown()
            c.spools.append(SpoolConfig(name: name, directory: dir, settle: settle))
        }
        for (i, t) in try top.tables("logs").enumerated() {
            var r = TableReader(file: path, table: t, place: "[[logs]] #\(i + 1)")
            let (name, dir) = try nameAndDir(&r)
            var l = LogSettings()
            if let g = try r.string("glob") {
                do { try LogNames.validateGlob(g) } catch { throw r.fail("glob", "a file-name pattern (\(error))") }
                l.glob = g
            }
            if let s = try r.bytes("rotate-size") { l.rotateSize = s; c.ownRotateSize.insert(name) }
            if let a = try r.seconds("rotate-age") { l.rotateAge = a; c.ownRotateAge.insert(name) }
            let compress = try r.bool("compress") ?? false
            let level = try r.int("compress-level", in: 1...9)
            if compress { l.compressLevel = Int32(level ?? 6) }
            if !compress && level != nil { throw r.fail("compress-level", "compress = true for this key to mean anything") }
            let method = try r.string("reopen") ?? "path"
            let pidFile = try r.string("pid-file")
            let signalName = try r.string("signal")
            let command = try r.string("command")
            let reopenTimeout = try r.seconds("reopen-timeout")
            if let t = reopenTimeout { l.reopenTimeout = t }
            switch method {
            case "path":
                l.reopen = .path
            case "signal":
                guard let p = pidFile else { throw r.fail("pid-file", "a pid file when reopen = \"signal\"") }
                let sig = signalName ?? "HUP"
                guard let n = Signals.number(sig) else { throw r.fail("signal", "a signal name such as HUP or USR1, got '\(sig)'") }
                l.reopen = .signal(pidFile: p, signal: n)
            case "command":
                guard let cmd = command, !cmd.isEmpty else { throw r.fail("command", "a shell command when reopen = \"command\"") }
                l.reopen = .command(cmd)
            default:
                throw r.fail("reopen", "\"path\", \"signal\" or \"command\", got '\(method)'")
            }
            if method != "signal" && (pidFile != nil || signalName != nil) {
                throw r.fail(pidFile != nil ? "pid-file" : "signal", "reopen = \"signal\" for this key to mean anything")
            }
            if method != "command" && command != nil { throw r.fail("command", "reopen = \"command\" for this key to mean anything") }
            if method != "command" && reopenTimeout != nil { throw r.fail("reopen-timeout", "reopen = \"command\" for this key to mean anything") }
            try r.rejectUnknown()
            c.spools.append(SpoolConfig(name: name, directory: dir, logs: l))
        }
        try top.rejectUnknown()
        var seen: Set<String> = []
        for s in c.spools where !seen.insert(s.name).inserted {
            throw ConfigError(path, "spool name '\(s.name)' is used twice")
        }
        return c
    }

    private static func nameAndDir(_ r: inout TableReader) throws -> (String, String) {
        guard let name = try r.string("name") else { throw r.fail("name", "a spool name") }
        do { try Names.validateIdentifier(name, what: "spool name") } catch { throw r.fail("name", "1-64 of [A-Za-z0-9._-] (\(error))") }
        guard let dir = try r.string("dir"), !dir.isEmpty else { throw r.fail("dir", "the spool's directory") }
        return (name, dir)
    }
}
