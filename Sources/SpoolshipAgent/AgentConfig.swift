import Foundation
import Glibc
import SpoolshipCore
import SpoolshipIO
import SpoolshipDaemon

/// How the producers of a log spool learn to reopen the path after a rotation.
public enum ReopenMethod: Sendable, Equatable, CustomStringConvertible {
    /// They notice on their own (they reopen by path on every write, or when the path's inode
    /// changes): nothing to do.
    case path
    /// Send `signal` to the pid read from `pidFile` (what nginx, rsyslog and most daemons take).
    case signal(pidFile: String, signal: Int32)
    /// Run a shell command, as logrotate's postrotate does.
    case command(String)
    /// They never reopen (a shell's `>>`, systemd's `StandardOutput=append:`, a plain file
    /// appender): the agent does not rename the file but follows it, cutting its growth into
    /// segments that are byte ranges of the live file (`LogFollower`).
    case never

    public var description: String {
        switch self {
        case .path: return "path"
        case .signal(let f, let s): return "signal \(s) to the pid in \(f)"
        case .command(let c): return "command '\(c)'"
        case .never: return "never (followed)"
        }
    }
}

/// The settings of a log spool.
public struct LogSettings: Sendable, Equatable {
    public var glob = LogNames.defaultGlob
    /// Rotate an active file once it holds this many bytes...
    public var rotateSize: UInt64 = 64 << 20
    /// ...or once its first byte not yet rotated is this many seconds old.
    public var rotateAge: Double = 60
    /// gzip each segment when it is sealed (zlib level), or nil for none.
    public var compressLevel: Int32?
    public var reopen: ReopenMethod = .path
    /// A reopen command still running after this long is killed.
    public var reopenTimeout: Double = 30
    public init() {}
}

extension LogSettings {
    /// The spool's files are followed, not rotated (`reopen = "never"`).
    public var follows: Bool { reopen == .never }
}

public struct SpoolConfig: Sendable, Equatable {
    public var name: String
    public var directory: String
    /// nil for a blob spool.
    public var logs: LogSettings?
    /// A blob spool's settle time, in seconds: a file closed after writing is complete only
    /// once it has been left alone (no write, so an unchanged mtime) for this long. nil: at
    /// its close. A file renamed into the spool is complete at once either way.
    public var settle: Double?
    public init(name: String, directory: String, logs: LogSettings? = nil, settle: Double? = nil) {
        self.name = name
        self.directory = directory
        self.logs = logs
        self.settle = settle
    }
}

public struct AgentConfig: Sendable, Equatable {
    public var collector: Endpoint
    public var agentID: String
    public var stateDir: String
    public var spools: [SpoolConfig]
    /// Keep acknowledged files here (`<archive-dir>/<spool>/<name>`) instead of deleting them.
    public var archiveDir: String?
    public var once = false
    /// With `once`: give up after this many seconds without progress.
    public var timeout: Double = 300
    /// A connection on which the collector says nothing for this long, while something is
    /// outstanding, is taken for dead. Pings go out at a third of it when idle.
    public var ioTimeout: Double = 30
    public var connectTimeout: Double = 10
    /// This agent's secret (`--secret-file`); nil to connect without credentials.
    public var secret: [UInt8]?
    /// TLS to the collector (`[tls]`, `--tls-*`); nil for plain TCP. The files are read into
    /// a context when the settings are resolved (`AgentSettings.tlsContext`).
    public var tls: TLSSettings?
    public var backoffMin: Double = 0.1
    public var backoffMax: Double = 30

    public init(collector: Endpoint, agentID: String, stateDir: String, spools: [SpoolConfig]) {
        self.collector = collector
        self.agentID = agentID
        self.stateDir = stateDir
        self.spools = spools
    }
}


struct FatalRefusal: Error, CustomStringConvertible {
    var description: String
}
