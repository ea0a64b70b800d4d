import Foundation
import Logging
import SpoolshipCore
import SpoolshipDaemon
import SpoolshipIO

/// The agent's own flags, as given on the command line (nil or empty: not given), beside
/// the flags both daemons take (`common`).
public struct AgentFlags: Equatable, Sendable {
    public var common = DaemonFlags()
    public var collector: String?
    public var agentID: String?
    public var stateDir: String?
    /// `--spool NAME=DIR`, as given.
    public var spool: [String] = []
    /// `--logs NAME=DIR[:GLOB]`, as given.
    public var logs: [String] = []
    /// `--follow-logs NAME=DIR[:GLOB]`, as given.
    public var followLogs: [String] = []
    public var rotateSize: String?
    public var rotateAge: Double?
    public var settle: Double?
    public var archiveDir: String?
    public var once = false
    public var timeout: Double?
    public var ioTimeout: Double?
    public var secretFile: String?
    /// `--tls-server-name`: the name the collector's certificate must hold.
    public var tlsServerName: String?

    public init() {}
}

/// Everything the agent process runs with, resolved from the flags over the config file over
/// the defaults (docs/OPERATIONS.md, "Config files", "Precedence"): the agent's configuration,
/// the control socket and metrics listener (`observed`), and the log level. The file is read
/// once per resolution: at start, and at each reload.
public struct AgentSettings: Sendable {
    public var agent: AgentConfig
    public var observed: ObservedSettings
    public var logLevel: Logger.Level
    /// `agent.tls`'s files, read: what new connections use.
    public var tlsContext: TLSContext?

    /// Resolves `flags` over the config file (`--config`, else `defaultConfigPath` when it
    /// exists). The checks run in this order, and the first failure is thrown
    /// (`SettingsError`, or the error `preflight` throws): the file; the agent's configuration
    /// (`collector`, `agent-id`, `state-dir`, sizes and times, spools, the secret file, TLS
    /// and its files); then
    /// `preflight` on it (a reload opens the spool directories there); then the control socket
    /// and metrics flags; then the log level.
    public static func resolve(_ flags: AgentFlags, defaultConfigPath: String = AgentFileConfig.defaultPath,
                               preflight: (AgentConfig) throws -> Void = { _ in }) throws -> AgentSettings {
        var file = AgentFileConfig()
        if let path = flags.common.configFile(defaultPath: defaultConfigPath) {
            do { file = try AgentFileConfig.load(path: path) } catch { throw SettingsError("\(error)") }
        }
        let agent = try agentConfig(flags, file: file)
        let tlsContext = try agent.tls?.context(server: false)
        try preflight(agent)
        let observed = try flags.common.observed(file: (file.controlSocket, file.metricsListen, file.metricsPortFile))
        // The file's level was checked when it was read: only the flag can be wrong here.
        let level = try flags.common.level(file: file.logLevel, shown: flags.common.logLevel ?? "")
        return AgentSettings(agent: agent, observed: observed, logLevel: level, tlsContext: tlsContext)
    }

    /// The spools that `--spool` and `--logs` give.
    static func flagSpools(_ flags: AgentFlags) throws -> [SpoolConfig] {
        let blobs = try flags.spool.map { s in
            guard let eq = s.firstIndex(of: "="), eq != s.startIndex, s.index(after: eq) != s.endIndex else {
                throw SettingsError("--spool must be NAME=DIR, got '\(s)'")
            }
            let name = String(s[..<eq])
            do { try Names.validateIdentifier(name, what: "spool name") } catch { throw SettingsError("--spool \(s): \(error)") }
            return SpoolConfig(name: name, directory: String(s[s.index(after: eq)...]))
        }
        let logSpools = try (flags.logs.map { ($0, false) } + flags.followLogs.map { ($0, true) }).map { a, follow in
            do {
                let p = try LogNames.parseLogSpoolArgument(a)
                var l = LogSettings()
                l.glob = p.glob
                if follow { l.reopen = .never }
                return SpoolConfig(name: p.name, directory: p.directory, logs: l)
            } catch {
                let text = "\(error)"
                throw SettingsError(follow ? text.replacingOccurrences(of: "--logs", with: "--follow-logs") : text)
            }
        }
        return blobs + logSpools
    }

    /// The file's settings, then the flags over them, then the defaults.
    static func agentConfig(_ flags: AgentFlags, file: AgentFileConfig) throws -> AgentConfig {
        guard let collectorText = flags.collector ?? file.collector else {
            throw SettingsError("give --collector HOST:PORT (or collector in the config file)")
        }
        guard let endpoint = Endpoint(collectorText) else { throw SettingsError("--collector must be HOST:PORT, got '\(collectorText)'") }
        guard let id = flags.agentID ?? file.agentID else { throw SettingsError("give --agent-id (or agent-id in the config file)") }
        do { try Names.validateIdentifier(id, what: "agent id") } catch { throw SettingsError("--agent-id: \(error)") }
        guard let state = flags.stateDir ?? file.stateDir else { throw SettingsError("give --state-dir (or state-dir in the config file)") }
        var flagSize: UInt64?
        if let s = flags.rotateSize {
            guard let b = ByteSize.parse(s) else {
                throw SettingsError("--rotate-size must be a size in bytes such as 1048576, 512K or 64M; got '\(s)'")
            }
            flagSize = b
        }
        if let a = flags.rotateAge, !(a > 0) { throw SettingsError("--rotate-age must be a positive number of seconds") }
        if let a = flags.settle, !(a > 0 && a.isFinite) { throw SettingsError("--settle must be a positive number of seconds") }
        // Flag spools replace file spools of the same name, whatever their kind.
        let fromFlags = try flagSpools(flags)
        let byFlag = Set(fromFlags.map(\.name))
        var spools = file.spools.filter { !byFlag.contains($0.name) } + fromFlags
        guard Set(spools.map(\.name)).count == spools.count else { throw SettingsError("each spool needs its own name") }
        guard !spools.isEmpty else {
            throw SettingsError("give at least one --spool NAME=DIR, --logs NAME=DIR[:GLOB] or --follow-logs NAME=DIR[:GLOB] (or spools in the config file)")
        }
        // Rotation: a spool's own setting in the file, else the flag, else the file's default
        // (else LogSettings' own). A spool a flag replaced has no settings of its own.
        for i in spools.indices where spools[i].logs != nil {
            let name = spools[i].name
            let fileOwn = !byFlag.contains(name)
            if !(fileOwn && file.ownRotateSize.contains(name)), let size = flagSize ?? file.rotateSize { spools[i].logs!.rotateSize = size }
            if !(fileOwn && file.ownRotateAge.contains(name)), let age = flags.rotateAge ?? file.rotateAge { spools[i].logs!.rotateAge = age }
        }
        // Settle time: a blob spool's own setting in the file, else the flag, else the file's default.
        for i in spools.indices where spools[i].logs == nil {
            let fileOwn = !byFlag.contains(spools[i].name) && file.ownSettle.contains(spools[i].name)
            if !fileOwn, let t = flags.settle ?? file.settle { spools[i].settle = t }
        }
        var c = AgentConfig(collector: endpoint, agentID: id, stateDir: state, spools: spools)
        c.archiveDir = flags.archiveDir ?? file.archiveDir
        c.once = flags.once
        c.timeout = flags.timeout ?? file.timeout ?? 300
        c.ioTimeout = flags.ioTimeout ?? file.ioTimeout ?? 30
        if let path = flags.secretFile ?? file.secretFile {
            do {
                c.secret = try AgentSecrets.parseSecret(try Files.readPrivateFile(path, what: "secret file"))
            } catch let e as AgentSecrets.ParseError {
                throw SettingsError("secret file \(path): \(e)")
            } catch {
                throw SettingsError("\(error)")
            }
        }
        guard c.timeout > 0, c.ioTimeout > 0 else { throw SettingsError("timeouts must be positive") }
        c.tls = try flags.common.tls(file: file.tls, serverName: flags.tlsServerName, defaultServerName: endpoint.host)
        return c
    }
}
