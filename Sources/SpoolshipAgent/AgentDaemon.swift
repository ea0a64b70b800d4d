import Foundation
import Logging
import SpoolshipDaemon
import SpoolshipIO

/// The agent process, once its settings are resolved: logging, signals, the control socket,
/// the metrics listener and the watchdog around an `AgentReloader`, all under one
/// `DaemonLifecycle` (SIGTERM stops; SIGHUP reloads, but with `--once`; the services stop
/// after the agents, the last started first).
public enum AgentDaemon {
    /// Runs the agent process. Returns its exit status: 0 after a stop (or a `--once` run
    /// that shipped everything), 1 when it cannot start, an agent fails, or one did not stop
    /// cleanly (docs/OPERATIONS.md, "Exit codes").
    public static func run(_ settings: AgentSettings, flags: AgentFlags,
                           defaultConfigPath: String = AgentFileConfig.defaultPath) -> Int32 {
        let config = settings.agent
        Processes.fixMallocMmapThreshold()
        // The reaper holds up to a batch of acknowledged files open while it removes them.
        Processes.raiseDescriptorLimit()
        SpoolshipLogging.bootstrap(level: settings.logLevel)
        var logger = Logger(label: "spoolship-agent")
        logger[metadataKey: "agent.id"] = "\(config.agentID)"
        SpoolshipLogging.logFileOpeningRoute(logger)
        // The process's figures, kept across reloads; counted in Prometheus metrics too with
        // --metrics-listen.
        let observed = settings.observed
        let fixedAtStart = FixedAtStart(observed)
        let factory = observed.metrics == nil ? nil : SpoolshipMetricsFactory()
        let stats = factory.map { AgentStats(factory: $0) } ?? AgentStats()
        let lifecycle = DaemonLifecycle()
        let agents = AgentReloader(settings: settings, flags: flags, defaultConfigPath: defaultConfigPath, logger: logger,
                                   stats: stats, lifecycle: lifecycle, fixedAtStart: fixedAtStart)
        let once = config.once
        lifecycle.takeSignals {
            guard !once else { return }
            agents.reload()
        }
        // After takeSignals: the services' threads must start with the signals blocked.
        return lifecycle.run { () -> Int32 in
            do {
                // A one-off --once run takes no socket unless given one: the default path is the
                // service's, and a run as root would leave root-owned files in its directory.
                let socketPath = observed.controlSocket ?? (once ? ControlSocketPath.off : nil)
                let control = try ControlServer.startIfConfigured(path: socketPath, defaultName: "agent", logger: logger) { line in
                    ControlServer.answer(line, daemon: "agent") { (try? StatusFormat.encoder().encode(agents.status())) ?? Data() }
                }
                if let control { lifecycle.add(control) }
            } catch {
                logger.critical("cannot start", metadata: ["error": "\(error)"])
                FileHandle.standardError.write(Data("spoolship-agent: \(LogText.escaped("\(error)"))\n".utf8))
                return 1
            }
            if let m = observed.metrics, let factory {
                let gauges = AgentGauges(factory: factory)
                let health = config.ioTimeout + config.connectTimeout
                do {
                    let server = try MetricsServer(listen: m.listen, portFile: m.portFile, logger: logger, render: {
                        gauges.updateIfDue { agents.status() }
                        return factory.registry.emitToBuffer()
                    }, health: {
                        if lifecycle.isStopping { return "stopping" }
                        return Heartbeats.shared.unhealthy(limit: health)
                    })
                    server.start()
                    lifecycle.add(server)
                } catch {
                    logger.critical("cannot start", metadata: ["error": "cannot listen for metrics on \(m.listen): \(error)"])
                    FileHandle.standardError.write(Data("spoolship-agent: cannot listen for metrics on \(m.listen): \(LogText.escaped("\(error)"))\n".utf8))
                    return 1
                }
            }
            // A loop may legitimately wait up to a connect plus an I/O deadline.
            lifecycle.startWatchdog(logger: logger, minimumStale: config.ioTimeout + config.connectTimeout) {
                agents.statusLine()
            }
            return agents.run()
        }
    }
}
