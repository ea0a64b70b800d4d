import Foundation
import Logging
import SpoolshipCore
import SpoolshipDaemon
import SpoolshipIO

/// The collector's own flags, as given on the command line (nil: not given), beside the flags
/// both daemons take (`common`).
public struct CollectorFlags: Equatable, Sendable {
    public var common = DaemonFlags()
    public var listen: String?
    public var dataDir: String?
    public var portFile: String?
    public var maxSegmentSize: UInt64?
    public var handshakeTimeout: Double?
    public var idleTimeout: Double?
    public var checkpointBytes: Int64?
    public var partialMaxAge: Double?
    public var freeSpaceReserve: String?
    public var maxPartialBytes: String?
    public var maxFrameBody: String?
    public var maxConnections: Int?
    public var agents: String?
    public var commitSync: String?

    public init() {}
}

/// Everything the collector process runs with, resolved from the flags over the config file
/// over the defaults (docs/OPERATIONS.md, "Config files"): the collector's configuration, the
/// control socket and metrics listener (`observed`), and the log level. The file is read once
/// per resolution: at start, and at each reload.
public struct CollectorSettings: Sendable {
    public var collector: CollectorConfig
    public var observed: ObservedSettings
    public var logLevel: Logger.Level
    /// `collector.tls`'s files, read: what new connections use.
    public var tlsContext: TLSContext?

    /// Resolves `flags` over the config file (`--config`, else `defaultConfigPath` when it
    /// exists). `socketActivated`: systemd passes the listening socket (LISTEN_FDS is set),
    /// which stands for `--listen`; the descriptor itself is set afterwards
    /// (`collector.inheritedListener`). The checks run in this order, and the first failure
    /// is thrown as a `SettingsError`: the file; `listen`, `data-dir`, the log level, the
    /// sizes, limits and times, the agents file, TLS and its files; then the control socket
    /// and metrics flags.
    public static func resolve(_ flags: CollectorFlags, socketActivated: Bool,
                               defaultConfigPath: String = CollectorFileConfig.defaultPath) throws -> CollectorSettings {
        var file = CollectorFileConfig()
        if let path = flags.common.configFile(defaultPath: defaultConfigPath) {
            do { file = try CollectorFileConfig.load(path: path) } catch { throw SettingsError("\(error)") }
        }
        let listenText = flags.listen ?? file.listen
        if listenText == nil && !socketActivated {
            throw SettingsError("give --listen HOST:PORT (or listen in the config file), or start it with a socket from systemd")
        }
        var endpoint = Endpoint(host: "0.0.0.0", port: 0)
        if let l = listenText {
            guard let e = Endpoint(l) else { throw SettingsError("--listen must be HOST:PORT, got '\(l)'") }
            endpoint = e
        }
        guard let dir = flags.dataDir ?? file.dataDir else { throw SettingsError("give --data-dir (or data-dir in the config file)") }
        let level = try flags.common.level(file: file.logLevel)
        var c = CollectorConfig(listen: endpoint, dataDir: dir)
        c.portFile = flags.portFile ?? file.portFile
        c.maxSegmentSize = flags.maxSegmentSize ?? file.maxSegmentSize ?? c.maxSegmentSize
        c.handshakeTimeout = flags.handshakeTimeout ?? file.handshakeTimeout ?? c.handshakeTimeout
        c.idleTimeout = flags.idleTimeout ?? file.idleTimeout ?? c.idleTimeout
        c.checkpointBytes = flags.checkpointBytes ?? file.checkpointBytes.map { Int64(clamping: $0) } ?? c.checkpointBytes
        c.partialMaxAge = flags.partialMaxAge ?? file.partialMaxAge ?? c.partialMaxAge
        c.maxConnections = flags.maxConnections ?? file.maxConnections ?? c.maxConnections
        c.freeSpaceReserve = try size(flags.freeSpaceReserve, "--free-space-reserve", zeroAllowed: true, example: "512M or 2G")
            ?? file.freeSpaceReserve ?? c.freeSpaceReserve
        c.maxPartialBytes = try size(flags.maxPartialBytes, "--max-partial-bytes", zeroAllowed: true, example: "16G or 512M")
            ?? file.maxPartialBytes ?? c.maxPartialBytes
        guard c.maxPartialBytes <= 1 << 62 else {
            throw SettingsError("max-partial-bytes must be at most 4 EiB (2^62 bytes); got \(c.maxPartialBytes)")
        }
        c.maxFrameBody = Int(clamping: try size(flags.maxFrameBody, "--max-frame-body", zeroAllowed: false, example: "64K or 1M")
            ?? file.maxFrameBody ?? UInt64(c.maxFrameBody))
        guard (1024...(16 << 20)).contains(c.maxFrameBody) else {
            throw SettingsError("max-frame-body must be from 1K to 16M; got \(c.maxFrameBody) bytes")
        }
        guard c.maxSegmentSize > 0 && c.maxSegmentSize <= 1 << 62 else {
            throw SettingsError("max-segment-size must be from 1 byte to 4 EiB (2^62 bytes); got \(c.maxSegmentSize)")
        }
        guard c.maxConnections > 0 else { throw SettingsError("--max-connections must be positive") }
        if let path = flags.agents ?? file.agents {
            do {
                c.agents = try AgentSecrets.parse(try Files.readPrivateFile(path, what: "agents file"))
            } catch let e as AgentSecrets.ParseError {
                throw SettingsError("agents file \(path): \(e)")
            } catch {
                throw SettingsError("\(error)")
            }
        }
        if let m = flags.commitSync ?? file.commitSync {
            guard let parsed = CommitSync(rawValue: m) else { throw SettingsError("commit-sync must be filesystem or file; got '\(m)'") }
            c.commitSync = parsed
        }
        guard c.handshakeTimeout > 0, c.idleTimeout > 0 else { throw SettingsError("timeouts must be positive") }
        guard c.checkpointBytes > 0 else { throw SettingsError("--checkpoint-bytes must be positive") }
        guard c.partialMaxAge > 0 else { throw SettingsError("--partial-max-age must be positive") }
        c.tls = try flags.common.tls(file: file.tls)
        let tlsContext = try c.tls?.context(server: true)
        let observed = try flags.common.observed(file: (file.controlSocket, file.metricsListen, file.metricsPortFile))
        return CollectorSettings(collector: c, observed: observed, logLevel: level, tlsContext: tlsContext)
    }

    /// A size flag's value (suffixes K, M, G; "0" where zero turns the setting off), or nil
    /// when the flag was not given.
    static func size(_ text: String?, _ flag: String, zeroAllowed: Bool, example: String) throws -> UInt64? {
        guard let t = text else { return nil }
        if zeroAllowed && t == "0" { return 0 }
        guard let b = ByteSize.parse(t) else {
            throw SettingsError("\(flag) must be a size such as \(zeroAllowed ? "0, " : "")\(example); got '\(t)'")
        }
        return b
    }
}
