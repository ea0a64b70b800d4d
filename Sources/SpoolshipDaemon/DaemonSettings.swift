import Foundation
import Logging

/// The flags both daemons take, as given on the command line (nil: not given). The commands
/// declare them once (`DaemonOptions`, SpoolshipCommands); each daemon's settings type
/// (`AgentSettings`, `CollectorSettings`) merges them over its config file and the defaults.
public struct DaemonFlags: Equatable, Sendable {
    /// `--config FILE`: the config file; without it, the daemon's default path when it exists.
    public var config: String?
    /// `--log-level LEVEL`.
    public var logLevel: String?
    /// `--control-socket PATH` (or `none`).
    public var controlSocket: String?
    /// `--metrics-listen HOST:PORT`.
    public var metricsListen: String?
    /// `--metrics-port-file FILE`.
    public var metricsPortFile: String?
    /// `--tls-ca-file`, `--tls-cert-file`, `--tls-key-file`, `--tls-min-version`, `--ktls`
    /// (`tls(file:)`, TLSSettings.swift).
    public var tlsCAFile: String?
    public var tlsCertFile: String?
    public var tlsKeyFile: String?
    public var tlsMinVersion: String?
    public var kernelTLS: String?

    public init(config: String? = nil, logLevel: String? = nil, controlSocket: String? = nil,
                metricsListen: String? = nil, metricsPortFile: String? = nil) {
        self.config = config
        self.logLevel = logLevel
        self.controlSocket = controlSocket
        self.metricsListen = metricsListen
        self.metricsPortFile = metricsPortFile
    }

    /// The config file to read: `--config`, else `defaultPath` when it exists, else none.
    public func configFile(defaultPath: String) -> String? {
        configPath(given: config, defaultPath: defaultPath)
    }

    /// The control socket and the metrics listener: these flags over the file's keys (already
    /// checked when the file was read).
    public func observed(file: (controlSocket: String?, metricsListen: String?, metricsPortFile: String?)) throws -> ObservedSettings {
        do {
            return try ObservedSettings(controlSocket: controlSocket, metricsListen: metricsListen,
                                        metricsPortFile: metricsPortFile, file: file)
        } catch let e as ObservedSettings.Invalid {
            throw SettingsError(e.description)
        }
    }

    /// The log level: the flag, else the file's (checked when it was read), else info.
    /// `shown` is what the message quotes when the level is not one of the seven.
    public func level(file: String?, shown: String? = nil) throws -> Logger.Level {
        let text = logLevel ?? file ?? "info"
        guard let level = Logger.Level.parse(text) else {
            throw SettingsError("--log-level must be one of trace, debug, info, notice, warning, error, critical; got '\(shown ?? text)'")
        }
        return level
    }
}

/// Flags and a config file that cannot make a configuration, in one sentence (the config
/// file's own errors name the file first). The commands show it as a usage error: `Error: `,
/// the sentence, the usage, exit status 64. At a reload it is logged, and the running
/// configuration stays.
public struct SettingsError: Error, CustomStringConvertible, Equatable, Sendable {
    public var description: String
    public init(_ description: String) { self.description = description }
}
