import ArgumentParser
import Foundation
import Glibc
import Logging
import SpoolshipCore
import SpoolshipDaemon
import SpoolshipCollector
import SpoolshipIO

struct CollectorCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "spoolship-collector",
        abstract: "Receive segments from spoolship agents, commit them durably, acknowledge them.",
        discussion: """
        Committed segments appear under DATA_DIR/<agent-id>/<spool>/; partial data lives in \
        DATA_DIR/.spoolship. Example: spoolship-collector --listen 0.0.0.0:7070 --data-dir /srv/spool
        """)

    @Option(help: "A TOML config file (default /etc/spoolship/collector.toml when it exists); flags override it.")
    var config: String?

    @Option(help: "Address to listen on, HOST:PORT (port 0: any free port). Not needed under socket activation.")
    var listen: String?

    @Option(help: "Directory that receives committed segments.")
    var dataDir: String?

    @Option(help: "Write the bound port to this file once listening (for scripts and tests).")
    var portFile: String?

    @Option(help: "Largest segment accepted, in bytes (default 1 TiB).")
    var maxSegmentSize: UInt64?

    @Option(help: "Seconds a peer may take to say hello (default 10).")
    var handshakeTimeout: Double?

    @Option(help: "Seconds of silence after which a connection is dropped (default 60).")
    var idleTimeout: Double?

    @Option(help: "Bytes between durable checkpoints of a long transfer (default 64 MiB).")
    var checkpointBytes: Int64?

    @Option(help: "Seconds after which an untouched partial is removed at start (default 7 days).")
    var partialMaxAge: Double?

    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical (default info).")
    var logLevel: String?

    @Option(help: ArgumentHelp("Free space on the data dir's file system that segments may not use (suffixes K, M, G; 0: none; default 256M).", valueName: "bytes"))
    var freeSpaceReserve: String?

    @Option(help: ArgumentHelp("Unfinished data one agent may have here: segments on offer and partials it left (suffixes K, M, G; 0: no limit; default 64G). Past it, its left-over partials are dropped oldest first, then its offers wait.", valueName: "bytes"))
    var maxPartialBytes: String?

    @Option(help: ArgumentHelp("Largest frame body a peer may send, from 1K to 16M (default 64K). Segment data is not framed this way and is not limited by it.", valueName: "bytes"))
    var maxFrameBody: String?

    @Option(help: "Connections open at once; more are reset (default 4096).")
    var maxConnections: Int?

    @Option(help: "The agents that may connect: one 'AGENT-ID SECRET' pair a line, mode 0600. Without it, any agent id is accepted.")
    var agents: String?

    @Option(help: ArgumentHelp("The control socket that spoolship status asks (default $RUNTIME_DIRECTORY/collector.sock, else /run/spoolship/collector.sock; none: no socket).", valueName: "path"))
    var controlSocket: String?

    @Option(help: ArgumentHelp("Serve Prometheus metrics at /metrics and a health check at /healthz over HTTP on HOST:PORT (port 0: any free port).", valueName: "host:port"))
    var metricsListen: String?

    @Option(help: ArgumentHelp("Write the metrics listener's bound port to this file (for scripts and tests).", valueName: "file"))
    var metricsPortFile: String?

    /// The control socket and the metrics listener as configured: flags over the file.
    func observed() throws -> ObservedSettings {
        let f = try configPath(given: config, defaultPath: CollectorFileConfig.defaultPath).map { try CollectorFileConfig.load(path: $0) }
        do {
            return try ObservedSettings(controlSocket: controlSocket, metricsListen: metricsListen, metricsPortFile: metricsPortFile,
                                        file: (f?.controlSocket, f?.metricsListen, f?.metricsPortFile))
        } catch let e as ObservedSettings.Invalid {
            throw ValidationError(e.description)
        }
    }

    /// The file's settings, then the flags over them. `inherited` is a socket from systemd.
    func resolved(inherited: Int32?) throws -> (CollectorConfig, Logger.Level) {
        var file = CollectorFileConfig()
        if let path = configPath(given: config, defaultPath: CollectorFileConfig.defaultPath) {
            do { file = try CollectorFileConfig.load(path: path) } catch { throw ValidationError("\(error)") }
        }
        let listenText = listen ?? file.listen
        if listenText == nil && inherited == nil {
            throw ValidationError("give --listen HOST:PORT (or listen in the config file), or start it with a socket from systemd")
        }
        var endpoint = Endpoint(host: "0.0.0.0", port: 0)
        if let l = listenText {
            guard let e = Endpoint(l) else { throw ValidationError("--listen must be HOST:PORT, got '\(l)'") }
            endpoint = e
        }
        guard let dir = dataDir ?? file.dataDir else { throw ValidationError("give --data-dir (or data-dir in the config file)") }
        let levelText = logLevel ?? file.logLevel ?? "info"
        guard let level = Logger.Level.parse(levelText) else {
            throw ValidationError("--log-level must be one of trace, debug, info, notice, warning, error, critical; got '\(levelText)'")
        }
        var c = CollectorConfig(listen: endpoint, dataDir: dir)
        c.inheritedListener = inherited
        c.portFile = portFile ?? file.portFile
        c.maxSegmentSize = maxSegmentSize ?? file.maxSegmentSize ?? c.maxSegmentSize
        c.handshakeTimeout = handshakeTimeout ?? file.handshakeTimeout ?? c.handshakeTimeout
        c.idleTimeout = idleTimeout ?? file.idleTimeout ?? c.idleTimeout
        c.checkpointBytes = checkpointBytes ?? file.checkpointBytes.map { Int64(clamping: $0) } ?? c.checkpointBytes
        c.partialMaxAge = partialMaxAge ?? file.partialMaxAge ?? c.partialMaxAge
        c.maxConnections = maxConnections ?? file.maxConnections ?? c.maxConnections
        c.freeSpaceReserve = try size(freeSpaceReserve, "--free-space-reserve", zeroAllowed: true, example: "512M or 2G") ?? file.freeSpaceReserve ?? c.freeSpaceReserve
        c.maxPartialBytes = try size(maxPartialBytes, "--max-partial-bytes", zeroAllowed: true, example: "16G or 512M") ?? file.maxPartialBytes ?? c.maxPartialBytes
        guard c.maxPartialBytes <= 1 << 62 else {
            throw ValidationError("max-partial-bytes must be at most 4 EiB (2^62 bytes); got \(c.maxPartialBytes)")
        }
        c.maxFrameBody = Int(clamping: try size(maxFrameBody, "--max-frame-body", zeroAllowed: false, example: "64K or 1M") ?? file.maxFrameBody ?? UInt64(c.maxFrameBody))
        guard (1024...(16 << 20)).contains(c.maxFrameBody) else {
            throw ValidationError("max-frame-body must be from 1K to 16M; got \(c.maxFrameBody) bytes")
        }
        guard c.maxSegmentSize > 0 && c.maxSegmentSize <= 1 << 62 else {
            throw ValidationError("max-segment-size must be from 1 byte to 4 EiB (2^62 bytes); got \(c.maxSegmentSize)")
        }
        guard c.maxConnections > 0 else { throw ValidationError("--max-connections must be positive") }
        if let path = agents ?? file.agents {
            do {
                c.agents = try AgentSecrets.parse(try Files.readPrivateFile(path, what: "agents file"))
            } catch let e as AgentSecrets.ParseError {
                throw ValidationError("agents file \(path): \(e)")
            } catch {
                throw ValidationError("\(error)")
            }
        }
        guard c.handshakeTimeout > 0, c.idleTimeout > 0 else { throw ValidationError("timeouts must be positive") }
        guard c.checkpointBytes > 0 else { throw ValidationError("--checkpoint-bytes must be positive") }
        guard c.partialMaxAge > 0 else { throw ValidationError("--partial-max-age must be positive") }
        return (c, level)
    }

    /// A size flag's value (suffixes K, M, G; "0" where zero turns the setting off), or nil
    /// when the flag was not given.
    private func size(_ text: String?, _ flag: String, zeroAllowed: Bool, example: String) throws -> UInt64? {
        guard let t = text else { return nil }
        if zeroAllowed && t == "0" { return 0 }
        guard let b = ByteSize.parse(t) else {
            throw ValidationError("\(flag) must be a size such as \(zeroAllowed ? "0, " : "")\(example); got '\(t)'")
        }
        return b
    }

    func validate() throws {
        // A socket from systemd counts as --listen (its variables are read, not consumed, here).
        let activated = ProcessInfo.processInfo.environment["LISTEN_FDS"] != nil
        _ = try resolved(inherited: activated ? 3 : nil)
        _ = try observed()
    }

    func run() throws {
        let passed = ProcessInfo.processInfo.environment["LISTEN_FDS"] != nil
        let sockets = Systemd.listeningSockets()
        if passed && sockets.isEmpty {
            // LISTEN_FDS for another process, or no listening stream socket among the fds.
            FileHandle.standardError.write(Data("spoolship-collector: LISTEN_FDS is set, but no listening stream socket was passed to this process\n".utf8))
            throw ExitCode(1)
        }
        let inherited = sockets.first
        let (config, level) = try resolved(inherited: inherited)
        Processes.fixMallocMmapThreshold()
        SpoolshipLogging.bootstrap(level: level)
        let logger = Logger(label: "spoolship-collector")
        SpoolshipLogging.logFileOpeningRoute(logger)
        let stop = StopRequest()
        let running = Locked<Collector?>(nil)
        Signals.handle { [self] sig in
            guard sig == SIGHUP else { stop.request(); return }
            guard let collector = running.withLock({ $0 }) else { return }
            reload(collector, inherited: inherited, logger: logger)
        }
        let settings = try observed()
        collectorFixedAtStart.record(settings)
        let factory = settings.metrics == nil ? nil : SpoolshipMetricsFactory()
        let collector: Collector
        do {
            collector = try Collector(config: config, logger: logger, stats: factory.map { CollectorStats(factory: $0) } ?? CollectorStats())
        } catch {
            logger.critical("cannot start", metadata: ["error": "\(error)"])
            throw ExitCode(1)
        }
        running.withLock { $0 = collector }
        let control: ControlServer?
        do {
            control = try ControlServer.startIfConfigured(path: settings.controlSocket, defaultName: "collector", logger: logger) { line in
                ControlServer.answer(line, daemon: "collector") { (try? StatusFormat.encoder().encode(collector.status())) ?? Data() }
            }
        } catch {
            logger.critical("cannot start", metadata: ["error": "\(error)"])
            throw ExitCode(1)
        }
        var metricsServer: MetricsServer?
        if let m = settings.metrics, let factory = factory {
            let gauges = CollectorGauges(factory: factory)
            do {
                metricsServer = try MetricsServer(listen: m.listen, portFile: m.portFile, logger: logger, render: {
                    gauges.update(collector.status())
                    return factory.registry.emitToBuffer()
                }, health: {
                    collector.isStopping ? "stopping" : Heartbeats.shared.unhealthy(limit: 10)
                })
            } catch {
                logger.critical("cannot start", metadata: ["error": "cannot listen for metrics on \(m.listen): \(error)"])
                throw ExitCode(1)
            }
            metricsServer?.start()
        }
        stop.onRequest { collector.stop() }
        collector.run()
        metricsServer?.stop()
        control?.stop()
    }

    /// SIGHUP: reads the config file and the flags again. The log level, limits and timeouts
    /// apply to the connections that follow; the address and the data dir need a restart. A
    /// configuration that does not load is refused, and the running one goes on.
    func reload(_ collector: Collector, inherited: Int32?, logger: Logger) {
        Systemd.reloading()
        logger.notice("reloading the configuration")
        do {
            let (next, level) = try resolved(inherited: inherited)
            SpoolshipLogging.setLevel(level)
            var ignored = collector.reload(next)
            ignored += collectorFixedAtStart.changed(try observed())
            collector.closeRevokedConnections()
            if !ignored.isEmpty {
                logger.warning("these settings take effect only at a restart; keeping the running ones", metadata: ["keys": "\(ignored.joined(separator: ", "))"])
            }
            logger.notice("configuration reloaded")
        } catch {
            logger.error("reload failed; keeping the running configuration", metadata: ["error": "\(error)"])
        }
        Systemd.ready(status: collector.statusLine)
    }
}

/// The control socket and the metrics listener as started: a reload does not move them.
let collectorFixedAtStart = FixedAtStart()
