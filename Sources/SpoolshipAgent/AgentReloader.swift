import Dispatch
import Foundation
import Logging
import SpoolshipDaemon
import SpoolshipIO
import Synchronization

/// The agent process's supervisor: it runs one `Agent` at a time, in the same process, and
/// holds the reload state machine (docs/OPERATIONS.md, "Reload", "Agent"):
///
/// 1. SIGHUP (`reload`, on the signal thread): the flags over the config file again, then the
///    spools opened (`Agent.preflight`). A failure logs `reload failed; keeping the running
///    configuration`, and nothing changes. The same configuration as the running (or the
///    waiting) one: `configuration unchanged`. Otherwise the new configuration waits in
///    `next`, and the running agent stops without STOPPING=1.
/// 2. `run`, on the main thread, starts the next agent once the old one has stopped
///    cleanly; when that one cannot start, the previous configuration again; when that
///    fails too, the process stops (exit 1).
/// 3. A SIGHUP while no agent runs (starting, or between two) waits in `reloadWaiting` and
///    is taken as soon as the next one runs.
///
/// Its state is behind one `Mutex`; the agent itself is stopped and asked outside it.
public final class AgentReloader: Sendable {
    struct State {
        /// The agent that runs now; nil while one starts, between two, and at the end.
        var running: Agent?
        /// The configuration of the agent that runs or starts (for the status while none runs).
        var started: AgentConfig
        /// The configuration to start with once the running agent has stopped.
        var next: AgentConfig?
        /// A SIGHUP came while no agent was running.
        var reloadWaiting = false
        /// The TLS files of the running configuration, read (new connections take it), and
        /// those of `next`. A reload reads them again even when nothing else changed.
        var tls: TLSContext?
        var nextTLS: TLSContext?
    }

    let state: Mutex<State>
    let settings: AgentSettings
    let flags: AgentFlags
    let defaultConfigPath: String
    let logger: Logger
    let stats: AgentStats
    let lifecycle: DaemonLifecycle
    let fixedAtStart: FixedAtStart

    /// `settings` are those the process started with (from `flags` and the config file
    /// whose default path is `defaultConfigPath`); a reload resolves `flags` again.
    public init(settings: AgentSettings, flags: AgentFlags, defaultConfigPath: String = AgentFileConfig.defaultPath,
                logger: Logger, stats: AgentStats, lifecycle: DaemonLifecycle, fixedAtStart: FixedAtStart) {
        self.settings = settings
        self.flags = flags
        self.defaultConfigPath = defaultConfigPath
        self.logger = logger
        self.stats = stats
        self.lifecycle = lifecycle
        self.fixedAtStart = fixedAtStart
        state = Mutex(State(started: settings.agent))
    }

    /// What status and the metrics read: the running agent's, or the figures alone while none
    /// runs (starting, between two agents at a reload, stopping).
    public func status() -> AgentStatus {
        let (agent, started) = state.withLock { ($0.running, $0.started) }
        return agent?.status()
            ?? AgentStatus.idle(config: started, stats: stats.snapshot(), state: lifecycle.isStopping ? "stopping" : "starting")
    }

    /// The STATUS= line: the running agent's, else `starting`.
    public func statusLine() -> String {
        state.withLock { $0.running }?.statusLine() ?? "starting"
    }

    /// Runs agents until a stop, or an agent fails. Returns the process's exit status: 0
    /// after a stop (or the end of a `--once` run), 1 when an agent cannot start or run, or
    /// did not stop cleanly. Says why on standard error and in the log.
    public func run() -> Int32 {
        var current = settings.agent
        var currentTLS = settings.tlsContext
        var previous: (config: AgentConfig, tls: TLSContext?)?
        var shipped = (segments: 0, bytes: UInt64(0))
        Self.logTLS(current.tls, currentTLS, logger: logger)
        while true {
            let agent: Agent
            var agentLogger = logger
            agentLogger[metadataKey: "agent.id"] = "\(current.agentID)"
            let tls = currentTLS
            state.withLock { $0.tls = tls }
            do {
                agent = try Agent(config: current, logger: agentLogger, stats: stats, tls: { [self] in state.withLock { $0.tls } })
            } catch {
                guard let old = previous else {
                    logger.critical("agent stopped", metadata: ["error": "\(error)"])
                    Self.tellOperator(error)
                    return 1
                }
                logger.error("reload failed; going back to the previous configuration", metadata: ["error": "\(error)"])
                (current, currentTLS) = old
                previous = nil
                continue
            }
            let started = current
            let reloadNow = state.withLock { s -> Bool in
                s.running = agent
                s.started = started
                defer { s.reloadWaiting = false }
                return s.reloadWaiting
            }
            lifecycle.whileRunning(stop: { agent.stop() })
            if reloadNow {
                // A SIGHUP came while no agent was running: take it now.
                startThread("reload") { [self] in reload() }
            }
            // --once on a terminal: a progress bar on standard error until the run ends.
            let bar = current.once ? ProgressBar.startIfTerminal(agent) : nil
            do {
                try agent.run()
            } catch {
                bar?.end()
                notRunning()
                agent.close()
                logger.critical("agent stopped", metadata: ["error": "\(error)"])
                Self.tellOperator(error)
                return 1
            }
            notRunning()
            if agent.threadsLeft > 0 {
                // Its threads still use the state dir: another agent must not open it.
                logger.critical("the agent did not stop cleanly; exiting", metadata: ["threads": "\(agent.threadsLeft)"])
                bar?.end()
                return 1
            }
            agent.close()
            shipped.segments += agent.shippedSegments
            shipped.bytes += agent.shippedBytes
            let (next, nextTLS) = state.withLock { s -> (AgentConfig?, TLSContext?) in
                defer { s.next = nil; s.nextTLS = nil }
                return (s.next, s.nextTLS)
            }
            // Ended before the agent's last words, so that they do not land on the bar's line.
            bar?.end()
            guard !lifecycle.isStopping, let next = next else { break }
            // The files as read last: a reload with an unchanged configuration may have read
            // them again since the start.
            previous = (current, state.withLock { $0.tls })
            current = next
            currentTLS = nextTLS
            if current.tls != previous?.config.tls { Self.logTLS(current.tls, currentTLS, logger: logger) }
            logger.notice("configuration reloaded; starting again", metadata: ["spools": "\(current.spools.map(\.name).joined(separator: ","))"])
        }
        if settings.agent.once {
            logger.info("all segments shipped", metadata: ["segments": "\(shipped.segments)", "bytes": "\(shipped.bytes)"])
        } else {
            logger.info("stopped", metadata: ["segments": "\(shipped.segments)", "bytes": "\(shipped.bytes)"])
        }
        return 0
    }

    private func notRunning() {
        state.withLock { $0.running = nil }
        lifecycle.whileRunning(stop: nil)
    }

    /// SIGHUP: reads the config file and the flags again. A configuration that does not load
    /// or whose spools cannot be opened is refused, and the running agent goes on. Otherwise
    /// the running agent stops gracefully (its state is saved) and `run` starts one with the
    /// new configuration, in the same process.
    public func reload() {
        let running = state.withLock { s -> Agent? in
            // Starting, or between two agents: `run` takes it once one runs.
            if s.running == nil { s.reloadWaiting = true }
            return s.running
        }
        guard let agent = running else {
            logger.notice("reload requested while starting; it follows the start")
            return
        }
        Systemd.reloading()
        logger.notice("reloading the configuration")
        do {
            let next = try AgentSettings.resolve(flags, defaultConfigPath: defaultConfigPath, preflight: Agent.preflight)
            let ignored = fixedAtStart.changed(next.observed)
            if !ignored.isEmpty {
                logger.warning("these settings take effect only at a restart; keeping the running ones", metadata: ["keys": "\(ignored.joined(separator: ", "))"])
            }
            SpoolshipLogging.setLevel(next.logLevel)
            let unchanged = state.withLock { s -> Bool in
                if next.agent == (s.next ?? agent.config) {
                    // The TLS files were read again: new connections use them.
                    if s.next != nil { s.nextTLS = next.tlsContext } else { s.tls = next.tlsContext }
                    return true
                }
                s.next = next.agent
                s.nextTLS = next.tlsContext
                return false
            }
            if unchanged {
                if let t = next.tlsContext {
                    logger.notice("TLS certificate and key read again; new connections use them", metadata: ["certificate": "\(t.certificateSummary)"])
                }
                logger.notice("configuration unchanged")
                Systemd.ready(status: agent.statusLine())
                return
            }
            agent.stop(notify: false)
        } catch {
            logger.error("reload failed; keeping the running configuration", metadata: ["error": "\(error)"])
            Systemd.ready(status: agent.statusLine())
        }
    }

    /// At a start (and a reload that changes TLS): whether TLS is on, the certificate, and
    /// whether the kernel can take the keys.
    static func logTLS(_ settings: TLSSettings?, _ context: TLSContext?, logger: Logger) {
        guard let s = settings, let c = context else {
            logger.info("TLS off: the connection to the collector is plain TCP (give tls.ca-file, tls.cert-file and tls.key-file to turn it on)")
            return
        }
        var meta: Logger.Metadata = ["certificate": "\(c.certificateSummary)", "server_name": "\(s.serverName ?? "")",
                                     "ktls": "\(s.kernelTLS.rawValue)", "min_version": "\(s.minVersion.rawValue)"]
        if s.kernelTLS != .off, let why = KernelTLS.unavailableReason() { meta["kernel_tls"] = "\(why)" }
        logger.info("TLS on", metadata: meta)
    }

    /// `spoolship-agent: <error>` on standard error, escaped as log lines are.
    static func tellOperator(_ error: any Error) {
        FileHandle.standardError.write(Data("spoolship-agent: \(LogText.escaped("\(error)"))\n".utf8))
    }

    /// `shipping [####      ] 12/300 segments, 45.0/120.0 MiB, 80.5 MiB/s, 2 s left`; while
    /// the spools are still being scanned the totals may grow (`300+`) and no time is told.
    public static func progressLine(_ p: Agent.Progress, elapsed: Double) -> String {
        let fraction = p.totalBytes > 0 ? Double(p.doneBytes) / Double(p.totalBytes)
            : (p.totalSegments > 0 ? Double(p.doneSegments) / Double(p.totalSegments) : (p.scanning ? 0 : 1))
        let more = p.scanning ? "+" : ""
        let rate = elapsed > 0 ? Double(p.doneBytes) / elapsed : 0
        var line = "shipping \(TerminalProgress.bar(fraction)) \(p.doneSegments)/\(p.totalSegments)\(more) segments, "
            + "\(TerminalProgress.mib(p.doneBytes))/\(TerminalProgress.mib(p.totalBytes))\(more) MiB, "
            + "\(TerminalProgress.mib(UInt64(rate))) MiB/s"
        if !p.scanning && rate > 0 && p.doneBytes < p.totalBytes {
            line += ", \(Int((Double(p.totalBytes - p.doneBytes) / rate).rounded(.up))) s left"
        }
        return line
    }

    /// The `--once` progress bar: a `progress` thread redraws it every 200 ms until `end()`,
    /// which draws it a last time, leaves it on screen and waits for the thread.
    final class ProgressBar: Sendable {
        let stopBar = DispatchSemaphore(value: 0)
        let barEnded = DispatchSemaphore(value: 0)
        let ended = Mutex(false)

        /// A bar when standard error is a terminal; nil otherwise.
        static func startIfTerminal(_ agent: Agent) -> ProgressBar? {
            guard let bar = TerminalProgress.startIfTerminal() else { return nil }
            let p = ProgressBar()
            startThread("progress") { [p] in
                let started = monotonicNow()
                repeat {
                    bar.draw(AgentReloader.progressLine(agent.progress(), elapsed: monotonicNow() - started))
                } while p.stopBar.wait(timeout: .now() + 0.2) == .timedOut
                bar.draw(AgentReloader.progressLine(agent.progress(), elapsed: monotonicNow() - started), force: true)
                bar.finish(keep: true)
                p.barEnded.signal()
            }
            return p
        }

        /// Ends the bar once (later calls do nothing), after its last drawing.
        func end() {
            let first = ended.withLock { e -> Bool in
                defer { e = true }
                return !e
            }
            guard first else { return }
            stopBar.signal()
            barEnded.wait()
        }
    }
}
