import Foundation
import Logging
import SpoolshipAgent
import SpoolshipCollector
import SpoolshipDaemon
import SpoolshipIO
import Testing

/// A temporary directory with config files in it, removed at the end of the test.
final class TempDir {
    let path: String

    init() throws {
        var template = Array((NSTemporaryDirectory() + "/spoolship-settings-XXXXXX").utf8CString)
        guard let p = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
            throw SyscallError(call: "mkdtemp", errno: errno)
        }
        path = String(cString: p)
    }

    deinit { try? FileManager.default.removeItem(atPath: path) }

    /// Writes `text` to `name` in the directory (with `mode`); returns its path.
    @discardableResult
    func write(_ name: String, _ text: String, mode: Int = 0o644) throws -> String {
        let p = "\(path)/\(name)"
        try text.write(toFile: p, atomically: false, encoding: .utf8)
        try FileManager.default.setAttributes([.posixPermissions: mode], ofItemAtPath: p)
        return p
    }
}

/// The default config path in these tests: never /etc/spoolship, whatever this host has.
let noDefault = "/nonexistent/spoolship-test/default.toml"

/// The message of the `SettingsError` that `body` throws ("" when it does not throw one).
func settingsError(_ body: () throws -> Void) -> String {
    do {
        try body()
        return ""
    } catch let e as SettingsError {
        return e.description
    } catch {
        return "not a SettingsError: \(error)"
    }
}

// MARK: - Agent

func agentFlags(config: String? = nil, _ edit: (inout AgentFlags) -> Void = { _ in }) -> AgentFlags {
    var f = AgentFlags()
    f.common.config = config
    edit(&f)
    return f
}

func resolveAgent(_ f: AgentFlags) throws -> AgentSettings {
    try AgentSettings.resolve(f, defaultConfigPath: noDefault)
}

@Test func agent_flagsAlone_takeTheDefaults() throws {
    let s = try resolveAgent(agentFlags {
        $0.collector = "127.0.0.1:7070"; $0.agentID = "web-1"; $0.stateDir = "/var/lib/x"; $0.spool = ["inbox=/spool/in"]
        $0.logs = ["app=/var/log/app"]
    })
    #expect(s.agent.collector == Endpoint(host: "127.0.0.1", port: 7070))
    #expect(s.agent.agentID == "web-1")
    #expect(s.agent.timeout == 300)
    #expect(s.agent.ioTimeout == 30)
    #expect(s.agent.archiveDir == nil)
    #expect(s.agent.secret == nil)
    #expect(s.agent.once == false)
    #expect(s.agent.spools.map(\.name) == ["inbox", "app"])
    #expect(s.agent.spools[0].settle == nil)
    #expect(s.agent.spools[1].logs == LogSettings())
    #expect(s.logLevel == .info)
    #expect(s.observed == (try ObservedSettings(controlSocket: nil, metricsListen: nil, metricsPortFile: nil, file: (nil, nil, nil))))
}

@Test func agent_flagsOverrideTheFile_andTheFileOverridesTheDefaults() throws {
    let d = try TempDir()
    let file = try d.write("agent.toml", """
        collector = "10.0.0.1:7070"
        agent-id = "from-file"
        state-dir = "/file/state"
        archive-dir = "/file/archive"
        io-timeout = 11
        timeout = 12
        log-level = "debug"
        control-socket = "/file/agent.sock"
        metrics-listen = "127.0.0.1:9100"
        metrics-port-file = "/file/port"
        [[spool]]
        name = "inbox"
        dir = "/file/inbox"
        """)
    let fromFile = try resolveAgent(agentFlags(config: file))
    #expect(fromFile.agent.collector == Endpoint(host: "10.0.0.1", port: 7070))
    #expect(fromFile.agent.agentID == "from-file")
    #expect(fromFile.agent.stateDir == "/file/state")
    #expect(fromFile.agent.archiveDir == "/file/archive")
    #expect(fromFile.agent.ioTimeout == 11)
    #expect(fromFile.agent.timeout == 12)
    #expect(fromFile.logLevel == .debug)
    #expect(fromFile.observed.controlSocket == "/file/agent.sock")
    #expect(fromFile.observed.metrics?.listen == Endpoint(host: "127.0.0.1", port: 9100))
    #expect(fromFile.observed.metrics?.portFile == "/file/port")

    let flags = agentFlags(config: file) {
        $0.collector = "10.0.0.2:7071"; $0.agentID = "from-flag"; $0.stateDir = "/flag/state"; $0.archiveDir = "/flag/archive"
        $0.ioTimeout = 21; $0.timeout = 22; $0.common.logLevel = "error"; $0.common.controlSocket = "none"
        $0.common.metricsListen = "127.0.0.1:0"; $0.common.metricsPortFile = "/flag/port"; $0.once = true
    }
    let s = try resolveAgent(flags)
    #expect(s.agent.collector == Endpoint(host: "10.0.0.2", port: 7071))
    #expect(s.agent.agentID == "from-flag")
    #expect(s.agent.stateDir == "/flag/state")
    #expect(s.agent.archiveDir == "/flag/archive")
    #expect(s.agent.ioTimeout == 21)
    #expect(s.agent.timeout == 22)
    #expect(s.agent.once)
    #expect(s.logLevel == .error)
    #expect(s.observed.controlSocket == "none")
    #expect(s.observed.metrics?.listen == Endpoint(host: "127.0.0.1", port: 0))
    #expect(s.observed.metrics?.portFile == "/flag/port")
}

@Test func agent_spoolsOfFlagsAndFile_aFlagReplacesTheFilesSpoolWhole() throws {
    let d = try TempDir()
    let file = try d.write("agent.toml", """
        collector = "10.0.0.1:7070"
        agent-id = "a"
        state-dir = "/s"
        rotate-size = "1M"
        rotate-age = 5
        settle = 3
        [[spool]]
        name = "blobs"
        dir = "/file/blobs"
        [[spool]]
        name = "own"
        dir = "/file/own"
        settle = 7
        [[logs]]
        name = "app"
        dir = "/file/app"
        rotate-size = 4096
        rotate-age = 9
        compress = true
        [[logs]]
        name = "plain"
        dir = "/file/plain"
        """)
    // The file alone: its spools' own settings, else its top-level ones.
    let a = try resolveAgent(agentFlags(config: file))
    #expect(a.agent.spools.map(\.name) == ["blobs", "own", "app", "plain"])
    #expect(a.agent.spools[0].settle == 3)
    #expect(a.agent.spools[1].settle == 7)
    #expect(a.agent.spools[2].logs?.rotateSize == 4096)
    #expect(a.agent.spools[2].logs?.rotateAge == 9)
    #expect(a.agent.spools[2].logs?.compressLevel == 6)
    #expect(a.agent.spools[3].logs?.rotateSize == 1 << 20)
    #expect(a.agent.spools[3].logs?.rotateAge == 5)

    // The flags: over the file's top-level settings, not over a spool's own.
    let b = try resolveAgent(agentFlags(config: file) { $0.rotateSize = "2M"; $0.rotateAge = 6; $0.settle = 4 })
    #expect(b.agent.spools[0].settle == 4)
    #expect(b.agent.spools[1].settle == 7)
    #expect(b.agent.spools[2].logs?.rotateSize == 4096)
    #expect(b.agent.spools[2].logs?.rotateAge == 9)
    #expect(b.agent.spools[3].logs?.rotateSize == 2 << 20)
    #expect(b.agent.spools[3].logs?.rotateAge == 6)

    // A flag spool of a file spool's name replaces it whole, whatever its kind; it goes last.
    let c = try resolveAgent(agentFlags(config: file) { $0.spool = ["app=/flag/app"]; $0.logs = ["own=/flag/own:*.txt"] })
    #expect(c.agent.spools.map(\.name) == ["blobs", "plain", "app", "own"])
    #expect(c.agent.spools[2] == SpoolConfig(name: "app", directory: "/flag/app", settle: 3))
    #expect(c.agent.spools[3].directory == "/flag/own")
    #expect(c.agent.spools[3].logs?.glob == "*.txt")
    // Not the file's own settings of the spool it replaced: the file's top-level ones.
    #expect(c.agent.spools[3].logs?.rotateSize == 1 << 20)
    #expect(c.agent.spools[3].logs?.compressLevel == nil)
}

@Test func agent_secretFile_flagOverFile() throws {
    let d = try TempDir()
    let fileSecret = try d.write("file.secret", "0123456789abcdef0123456789abcdef\n", mode: 0o600)
    let flagSecret = try d.write("flag.secret", "fedcba9876543210fedcba9876543210\n", mode: 0o600)
    let file = try d.write("agent.toml", """
        collector = "10.0.0.1:7070"
        agent-id = "a"
        state-dir = "/s"
        secret-file = "\(fileSecret)"
        [[spool]]
        name = "in"
        dir = "/in"
        """)
    #expect(try resolveAgent(agentFlags(config: file)).agent.secret == Array("0123456789abcdef0123456789abcdef".utf8))
    #expect(try resolveAgent(agentFlags(config: file) { $0.secretFile = flagSecret }).agent.secret == Array("fedcba9876543210fedcba9876543210".utf8))
    let open = try d.write("open.secret", "0123456789abcdef0123456789abcdef\n", mode: 0o644)
    #expect(settingsError { _ = try resolveAgent(agentFlags(config: file) { $0.secretFile = open }) }
        == "secret file \(open) is open to group or others (mode 644); it holds secrets: run chmod 600 \(open)")
}

@Test func agent_errors_oneSentenceEach_inOrder() throws {
    let d = try TempDir()
    let base: (inout AgentFlags) -> Void = {
        $0.collector = "127.0.0.1:7070"; $0.agentID = "a"; $0.stateDir = "/s"; $0.spool = ["in=/in"]
    }
    func error(_ edit: (inout AgentFlags) -> Void) -> String {
        settingsError { _ = try resolveAgent(agentFlags { base(&$0); edit(&$0) }) }
    }
    #expect(error { $0.collector = nil } == "give --collector HOST:PORT (or collector in the config file)")
    #expect(error { $0.collector = "nope" } == "--collector must be HOST:PORT, got 'nope'")
    #expect(error { $0.agentID = nil } == "give --agent-id (or agent-id in the config file)")
    #expect(error { $0.agentID = ".x" }.hasPrefix("--agent-id: "))
    #expect(error { $0.stateDir = nil } == "give --state-dir (or state-dir in the config file)")
    #expect(error { $0.rotateSize = "big" } == "--rotate-size must be a size in bytes such as 1048576, 512K or 64M; got 'big'")
    #expect(error { $0.rotateAge = 0 } == "--rotate-age must be a positive number of seconds")
    #expect(error { $0.settle = -1 } == "--settle must be a positive number of seconds")
    #expect(error { $0.spool = ["nodir"] } == "--spool must be NAME=DIR, got 'nodir'")
    #expect(error { $0.spool = ["=dir"] } == "--spool must be NAME=DIR, got '=dir'")
    #expect(error { $0.spool = ["a/b=dir"] }.hasPrefix("--spool a/b=dir: "))
    #expect(error { $0.logs = ["nodir"] } == "--logs must be NAME=DIR[:GLOB], got 'nodir'")
    #expect(error { $0.spool = ["in=/in", "in=/other"] } == "each spool needs its own name")
    #expect(error { $0.spool = [] } == "give at least one --spool NAME=DIR, --logs NAME=DIR[:GLOB] or --follow-logs NAME=DIR[:GLOB] (or spools in the config file)")
    #expect(error { $0.timeout = 0 } == "timeouts must be positive")
    #expect(error { $0.ioTimeout = -1 } == "timeouts must be positive")
    #expect(error { $0.common.controlSocket = "" } == "--control-socket must be a path of 1 to \(Socket.maxUnixPath) bytes, or none; got ''")
    #expect(error { $0.common.metricsPortFile = "/p" } == "--metrics-port-file needs --metrics-listen HOST:PORT")
    #expect(error { $0.common.metricsListen = "nope" } == "--metrics-listen must be HOST:PORT, got 'nope'")
    #expect(error { $0.common.logLevel = "loud" } == "--log-level must be one of trace, debug, info, notice, warning, error, critical; got 'loud'")
    // The first problem wins: the agent's configuration before the observation flags, those
    // before the log level.
    #expect(error { $0.collector = nil; $0.common.metricsListen = "nope" } == "give --collector HOST:PORT (or collector in the config file)")
    #expect(error { $0.common.metricsListen = "nope"; $0.common.logLevel = "loud" } == "--metrics-listen must be HOST:PORT, got 'nope'")

    // The file's errors name the file.
    let bad = try d.write("bad.toml", "rotate-sise = 1\n")
    #expect(error { $0.common.config = bad }.hasPrefix("\(bad): unknown key 'rotate-sise'; known keys here: "))
    #expect(error { $0.common.config = "\(d.path)/missing.toml" }.hasPrefix("\(d.path)/missing.toml: cannot read the file: "))
}

@Test func agent_preflightRunsAfterTheConfiguration_beforeTheObservationFlags() throws {
    struct Refused: Error, CustomStringConvertible { var description: String { "refused" } }
    var flags = agentFlags { $0.collector = "127.0.0.1:7070"; $0.agentID = "a"; $0.stateDir = "/s"; $0.spool = ["in=/in"] }
    var seen: AgentConfig?
    _ = try AgentSettings.resolve(flags, defaultConfigPath: noDefault) { seen = $0 }
    #expect(seen?.agentID == "a")
    flags.common.metricsListen = "nope"
    #expect(throws: Refused.self) { try AgentSettings.resolve(flags, defaultConfigPath: noDefault) { _ in throw Refused() } }
}

// MARK: - Collector

func collectorFlags(config: String? = nil, _ edit: (inout CollectorFlags) -> Void = { _ in }) -> CollectorFlags {
    var f = CollectorFlags()
    f.common.config = config
    edit(&f)
    return f
}

func resolveCollector(_ f: CollectorFlags, socketActivated: Bool = false) throws -> CollectorSettings {
    try CollectorSettings.resolve(f, socketActivated: socketActivated, defaultConfigPath: noDefault)
}

@Test func collector_flagsAlone_takeTheDefaults() throws {
    let s = try resolveCollector(collectorFlags { $0.listen = "127.0.0.1:0"; $0.dataDir = "/data" })
    let defaults = CollectorConfig(listen: Endpoint(host: "127.0.0.1", port: 0), dataDir: "/data")
    #expect(s.collector.listen == defaults.listen)
    #expect(s.collector.dataDir == "/data")
    #expect(s.collector.maxSegmentSize == defaults.maxSegmentSize)
    #expect(s.collector.handshakeTimeout == defaults.handshakeTimeout)
    #expect(s.collector.idleTimeout == defaults.idleTimeout)
    #expect(s.collector.checkpointBytes == defaults.checkpointBytes)
    #expect(s.collector.partialMaxAge == defaults.partialMaxAge)
    #expect(s.collector.maxConnections == defaults.maxConnections)
    #expect(s.collector.freeSpaceReserve == defaults.freeSpaceReserve)
    #expect(s.collector.maxPartialBytes == defaults.maxPartialBytes)
    #expect(s.collector.maxFrameBody == defaults.maxFrameBody)
    #expect(s.collector.commitSync == .filesystem)
    #expect(s.collector.portFile == nil)
    #expect(s.collector.agents == nil)
    #expect(s.collector.inheritedListener == nil)
    #expect(s.logLevel == .info)
    #expect(s.observed.controlSocket == nil && s.observed.metrics == nil)
}

@Test func collector_flagsOverrideTheFile_andTheFileOverridesTheDefaults() throws {
    let d = try TempDir()
    let file = try d.write("collector.toml", """
        listen = "0.0.0.0:7070"
        data-dir = "/file/data"
        port-file = "/file/port"
        max-segment-size = "1G"
        handshake-timeout = 3
        idle-timeout = 4
        checkpoint-bytes = "8M"
        partial-max-age = 100
        log-level = "warning"
        max-connections = 10
        free-space-reserve = "1G"
        max-partial-bytes = "2G"
        max-frame-body = "128K"
        commit-sync = "file"
        control-socket = "/file/c.sock"
        metrics-listen = "127.0.0.1:9101"
        """)
    let a = try resolveCollector(collectorFlags(config: file))
    #expect(a.collector.commitSync == .file)
    #expect(a.collector.listen == Endpoint(host: "0.0.0.0", port: 7070))
    #expect(a.collector.dataDir == "/file/data")
    #expect(a.collector.portFile == "/file/port")
    #expect(a.collector.maxSegmentSize == 1 << 30)
    #expect(a.collector.handshakeTimeout == 3)
    #expect(a.collector.idleTimeout == 4)
    #expect(a.collector.checkpointBytes == 8 << 20)
    #expect(a.collector.partialMaxAge == 100)
    #expect(a.logLevel == .warning)
    #expect(a.collector.maxConnections == 10)
    #expect(a.collector.freeSpaceReserve == 1 << 30)
    #expect(a.collector.maxPartialBytes == 2 << 30)
    #expect(a.collector.maxFrameBody == 128 << 10)
    #expect(a.observed.controlSocket == "/file/c.sock")
    #expect(a.observed.metrics?.listen == Endpoint(host: "127.0.0.1", port: 9101))

    let b = try resolveCollector(collectorFlags(config: file) {
        $0.listen = "127.0.0.1:1"; $0.dataDir = "/flag/data"; $0.portFile = "/flag/port"; $0.maxSegmentSize = 5
        $0.handshakeTimeout = 6; $0.idleTimeout = 7; $0.checkpointBytes = 8; $0.partialMaxAge = 9; $0.common.logLevel = "trace"
        $0.maxConnections = 11; $0.freeSpaceReserve = "0"; $0.maxPartialBytes = "0"; $0.maxFrameBody = "1K"; $0.commitSync = "filesystem"
        $0.common.controlSocket = "none"; $0.common.metricsListen = "127.0.0.1:0"; $0.common.metricsPortFile = "/flag/mport"
    })
    #expect(b.collector.listen == Endpoint(host: "127.0.0.1", port: 1))
    #expect(b.collector.dataDir == "/flag/data")
    #expect(b.collector.portFile == "/flag/port")
    #expect(b.collector.maxSegmentSize == 5)
    #expect(b.collector.handshakeTimeout == 6)
    #expect(b.collector.idleTimeout == 7)
    #expect(b.collector.checkpointBytes == 8)
    #expect(b.collector.partialMaxAge == 9)
    #expect(b.logLevel == .trace)
    #expect(b.collector.maxConnections == 11)
    #expect(b.collector.freeSpaceReserve == 0)
    #expect(b.collector.maxPartialBytes == 0)
    #expect(b.collector.maxFrameBody == 1024)
    #expect(b.collector.commitSync == .filesystem)
    #expect(b.observed.controlSocket == "none")
    #expect(b.observed.metrics?.listen == Endpoint(host: "127.0.0.1", port: 0))
    #expect(b.observed.metrics?.portFile == "/flag/mport")
}

@Test func collector_socketActivation_standsForListen() throws {
    let s = try resolveCollector(collectorFlags { $0.dataDir = "/data" }, socketActivated: true)
    #expect(s.collector.listen == Endpoint(host: "0.0.0.0", port: 0))
    #expect(s.collector.inheritedListener == nil)
    #expect(settingsError { _ = try resolveCollector(collectorFlags { $0.dataDir = "/data" }) }
        == "give --listen HOST:PORT (or listen in the config file), or start it with a socket from systemd")
}

@Test func collector_errors_oneSentenceEach_inOrder() throws {
    let d = try TempDir()
    func error(_ edit: (inout CollectorFlags) -> Void) -> String {
        settingsError { _ = try resolveCollector(collectorFlags { $0.listen = "127.0.0.1:0"; $0.dataDir = "/data"; edit(&$0) }) }
    }
    #expect(error { $0.listen = "nope" } == "--listen must be HOST:PORT, got 'nope'")
    #expect(error { $0.dataDir = nil } == "give --data-dir (or data-dir in the config file)")
    #expect(error { $0.common.logLevel = "loud" } == "--log-level must be one of trace, debug, info, notice, warning, error, critical; got 'loud'")
    #expect(error { $0.freeSpaceReserve = "lots" } == "--free-space-reserve must be a size such as 0, 512M or 2G; got 'lots'")
    #expect(error { $0.maxPartialBytes = "lots" } == "--max-partial-bytes must be a size such as 0, 16G or 512M; got 'lots'")
    #expect(error { $0.maxPartialBytes = "\(UInt64(1) << 63)" } == "max-partial-bytes must be at most 4 EiB (2^62 bytes); got \(UInt64(1) << 63)")
    #expect(error { $0.maxFrameBody = "0" } == "--max-frame-body must be a size such as 64K or 1M; got '0'")
    #expect(error { $0.maxFrameBody = "512" } == "max-frame-body must be from 1K to 16M; got 512 bytes")
    #expect(error { $0.maxSegmentSize = 0 } == "max-segment-size must be from 1 byte to 4 EiB (2^62 bytes); got 0")
    #expect(error { $0.maxConnections = 0 } == "--max-connections must be positive")
    #expect(error { $0.commitSync = "fast" } == "commit-sync must be filesystem or file; got 'fast'")
    #expect(error { $0.idleTimeout = 0 } == "timeouts must be positive")
    #expect(error { $0.checkpointBytes = 0 } == "--checkpoint-bytes must be positive")
    #expect(error { $0.partialMaxAge = 0 } == "--partial-max-age must be positive")
    #expect(error { $0.common.metricsPortFile = "/p" } == "--metrics-port-file needs --metrics-listen HOST:PORT")
    #expect(error { $0.agents = "\(d.path)/none" }.hasPrefix("agents file \(d.path)/none: "))
    let agents = try d.write("agents", "web-1\n", mode: 0o600)
    #expect(error { $0.agents = agents }.hasPrefix("agents file \(agents): "))
    // The first problem wins: the log level before the sizes, all before the observation flags.
    #expect(error { $0.common.logLevel = "loud"; $0.maxConnections = 0 }.hasPrefix("--log-level"))
    #expect(error { $0.maxConnections = 0; $0.common.metricsListen = "nope" } == "--max-connections must be positive")

    let bad = try d.write("bad.toml", "idle-timeout = 0\n")
    #expect(error { $0.common.config = bad } == "\(bad): key 'idle-timeout': expected a positive number of seconds")
}
