import Foundation
import Glibc
import SpoolshipCore
import SpoolshipIO
import SpoolshipDaemon
import TOMLKit

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
    /// The `[tls]` table.
    public var tls = TLSKeys()

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
        c.tls = try top.tls(serverName: true)
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
            case "never":
                // Followed: segments are ranges of the live file, sent as they are.
                if compress { throw r.fail("compress", "false with reopen = \"never\" (a followed file's ranges are sent from the live file with sendfile, never rewritten)") }
                l.reopen = .never
            default:
                throw r.fail("reopen", "\"path\", \"signal\", \"command\" or \"never\", got '\(method)'")
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
