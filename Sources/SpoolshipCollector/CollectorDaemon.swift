import Foundation
import Logging
import SpoolshipDaemon
import SpoolshipIO

/// The collector process: socket activation, logging, signals, the control socket and the
/// metrics listener around one `Collector`, under one `DaemonLifecycle` (SIGTERM stops;
/// SIGHUP reloads; the services stop after the collector, the last started first).
public final class CollectorDaemon: Sendable {
    let flags: CollectorFlags
    let defaultConfigPath: String
    /// The socket that systemd passed, if any.
    let inherited: Int32?
    let fixedAtStart: FixedAtStart
    let logger: Logger

    init(flags: CollectorFlags, defaultConfigPath: String, inherited: Int32?, fixedAtStart: FixedAtStart, logger: Logger) {
        self.flags = flags
        self.defaultConfigPath = defaultConfigPath
        self.inherited = inherited
        self.fixedAtStart = fixedAtStart
        self.logger = logger
    }

    /// Whether systemd passes this process a socket (LISTEN_FDS is set; it is read here, not
    /// consumed): it stands for `--listen` when the settings are resolved.
    public static var socketActivated: Bool { ProcessInfo.processInfo.environment["LISTEN_FDS"] != nil }

    /// Runs the collector process with `settings` (resolved from `flags` with
    /// `socketActivated`). Returns its exit status: 0 after a stop, 1 when it cannot start
    /// (docs/OPERATIONS.md, "Exit codes").
    public static func run(_ settings: CollectorSettings, flags: CollectorFlags,
                           defaultConfigPath: String = CollectorFileConfig.defaultPath) -> Int32 {
        let sockets = Systemd.listeningSockets()
        if socketActivated && sockets.isEmpty {
            // LISTEN_FDS for another process, or no listening stream socket among the fds.
            FileHandle.standardError.write(Data("spoolship-collector: LISTEN_FDS is set, but no listening stream socket was passed to this process\n".utf8))
            return 1
        }
        let inherited = sockets.first
        var config = settings.collector
        config.inheritedListener = inherited
        Processes.fixMallocMmapThreshold()
        SpoolshipLogging.bootstrap(level: settings.logLevel)
        let logger = Logger(label: "spoolship-collector")
        SpoolshipLogging.logFileOpeningRoute(logger)
        let daemon = CollectorDaemon(flags: flags, defaultConfigPath: defaultConfigPath, inherited: inherited,
                                     fixedAtStart: FixedAtStart(settings.observed), logger: logger)
        let lifecycle = DaemonLifecycle()
        let running = Locked<Collector?>(nil)
        lifecycle.takeSignals {
            guard let collector = running.withLock({ $0 }) else { return }
            daemon.reload(collector)
        }
        let observed = settings.observed
        let factory = observed.metrics == nil ? nil : SpoolshipMetricsFactory()
        let collector: Collector
        do {
            collector = try Collector(config: config, tls: settings.tlsContext, logger: logger, stats: factory.map { CollectorStats(factory: $0) } ?? CollectorStats())
        } catch {
            logger.critical("cannot start", metadata: ["error": "\(error)"])
            return 1
        }
        running.withLock { $0 = collector }
        return lifecycle.run { () -> Int32 in
            do {
                let control = try ControlServer.startIfConfigured(path: observed.controlSocket, defaultName: "collector", logger: logger) { line in
                    ControlServer.answer(line, daemon: "collector") { (try? StatusFormat.encoder().encode(collector.status())) ?? Data() }
                }
                if let control { lifecycle.add(control) }
            } catch {
                logger.critical("cannot start", metadata: ["error": "\(error)"])
                return 1
            }
            if let m = observed.metrics, let factory {
                let gauges = CollectorGauges(factory: factory)
                do {
                    let server = try MetricsServer(listen: m.listen, portFile: m.portFile, logger: logger, render: {
                        gauges.update(collector.status())
                        return factory.registry.emitToBuffer()
                    }, health: {
                        collector.isStopping ? "stopping" : Heartbeats.shared.unhealthy(limit: 10)
                    })
                    server.start()
                    lifecycle.add(server)
                } catch {
                    logger.critical("cannot start", metadata: ["error": "cannot listen for metrics on \(m.listen): \(error)"])
                    return 1
                }
            }
            lifecycle.startWatchdog(logger: logger, minimumStale: 5) { collector.statusLine }
            lifecycle.whileRunning(stop: { collector.stop() })
            collector.run()
            return 0
        }
    }

    /// SIGHUP: reads the config file and the flags again. The log level, limits and timeouts
    /// apply to the connections that follow; the address and the data dir need a restart. A
    /// configuration that does not load is refused, and the running one goes on.
    func reload(_ collector: Collector) {
        Systemd.reloading()
        logger.notice("reloading the configuration")
        do {
            let settings = try CollectorSettings.resolve(flags, socketActivated: inherited != nil, defaultConfigPath: defaultConfigPath)
            var next = settings.collector
            next.inheritedListener = inherited
            SpoolshipLogging.setLevel(settings.logLevel)
            var ignored = collector.reload(next, tls: settings.tlsContext)
            ignored += fixedAtStart.changed(settings.observed)
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
