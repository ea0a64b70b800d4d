import ArgumentParser
import Foundation
import Glibc
import Logging
import SpoolshipCore
import SpoolshipDaemon
import SpoolshipAgent
import SpoolshipIO

struct AgentCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "spoolship-agent",
        abstract: "Ship the files of spool directories to a spoolship collector.",
        discussion: """
        A blob spool (--spool) ships every complete file (closed after writing, or renamed in; \
        dotfiles and *.tmp are ignored) whole. A log spool (--logs) rotates every file matching \
        its glob by size or age into segments NAME.<SEQ>, sealed once no process writes them. \
        Each file is removed once the collector has committed it durably. Settings come from \
        the config file (--config) and flags, which override it. Example: spoolship-agent \
        --collector 10.0.0.5:7070 --agent-id web-1 --state-dir /var/lib/spoolship \
        --spool inbox=/var/spool/inbox --logs app=/var/log/app:*.log --rotate-age 30
        """)

    @Option(help: "Seconds a file closed after writing must be left alone before a blob spool takes it as complete (for producers that append in several cycles); every blob spool without its own `settle` in the config file. Default: complete at its close.")
    var settle: Double?

    @Option(help: "A TOML config file (default /etc/spoolship/agent.toml when it exists); flags override it.")
    var config: String?

    @Option(help: "The collector, HOST:PORT.")
    var collector: String?

    @Option(help: "This agent's id: 1-64 of [A-Za-z0-9._-].")
    var agentId: String?

    @Option(help: "Directory for the agent's own state.")
    var stateDir: String?

    @Option(help: ArgumentHelp("A blob spool, NAME=DIR; may repeat.", valueName: "name=dir"))
    var spool: [String] = []

    @Option(help: ArgumentHelp("A log spool, NAME=DIR[:GLOB] (GLOB defaults to *.log); may repeat.", valueName: "name=dir[:glob]"))
    var logs: [String] = []

    @Option(help: ArgumentHelp("Rotate a log file once it holds this many bytes (suffixes K, M, G); default 64M.", valueName: "bytes"))
    var rotateSize: String?

    @Option(help: ArgumentHelp("Rotate a log file once its oldest unrotated byte is this many seconds old; default 60.", valueName: "seconds"))
    var rotateAge: Double?

    @Option(help: "Keep acknowledged files under DIR/<spool>/ instead of deleting them (same file system as the spools).")
    var archiveDir: String?

    @Flag(help: "Ship what is in the spools now (rotating log files first), wait for every acknowledgement, and exit.")
    var once = false

    @Option(help: "With --once: give up after this many seconds without progress (default 300).")
    var timeout: Double?

    @Option(help: "Seconds of silence from the collector, with work outstanding, before reconnecting (default 30).")
    var ioTimeout: Double?

    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical (default info).")
    var logLevel: String?

    @Option(help: "This agent's secret, on one line, in a file of mode 0600 (the collector's --agents lists it).")
    var secretFile: String?

    @Option(help: ArgumentHelp("The control socket that spoolship status asks (default $RUNTIME_DIRECTORY/agent.sock, else /run/spoolship/agent.sock; none: no socket).", valueName: "path"))
    var controlSocket: String?

    @Option(help: ArgumentHelp("Serve Prometheus metrics at /metrics and a health check at /healthz over HTTP on HOST:PORT (port 0: any free port).", valueName: "host:port"))
    var metricsListen: String?

    @Option(help: ArgumentHelp("Write the metrics listener's bound port to this file (for scripts and tests).", valueName: "file"))
    var metricsPortFile: String?

    func parsedSpools() throws -> [SpoolConfig] {
        let blobs = try spool.map { s in
            guard let eq = s.firstIndex(of: "="), eq != s.startIndex, s.index(after: eq) != s.endIndex else {
                throw ValidationError("--spool must be NAME=DIR, got '\(s)'")
            }
            let name = String(s[..<eq])
            do { try Names.validateIdentifier(name, what: "spool name") } catch { throw ValidationError("--spool \(s): \(error)") }
            return SpoolConfig(name: name, directory: String(s[s.index(after: eq)...]))
        }
        let logSpools = try logs.map { a in
            do {
                let p = try LogNames.parseLogSpoolArgument(a)
                var l = LogSettings()
                l.glob = p.glob
                return SpoolConfig(name: p.name, directory: p.directory, logs: l)
            } catch {
                throw ValidationError("\(error)")
            }
        }
        return blobs + logSpools
    }

    /// The file's settings, then the flags over them.
    func resolved() throws -> AgentConfig {
        var file = AgentFileConfig()
        if let path = configPath(given: config, defaultPath: AgentFileConfig.defaultPath) {
            do { file = try AgentFileConfig.load(path: path) } catch { throw ValidationError("\(error)") }
        }
        guard let collectorText = collector ?? file.collector else { throw ValidationError("give --collector HOST:PORT (or collector in the config file)") }
        guard let endpoint = Endpoint(collectorText) else { throw ValidationError("--collector must be HOST:PORT, got '\(collectorText)'") }
        guard let id = agentId ?? file.agentID else { throw ValidationError("give --agent-id (or agent-id in the config file)") }
        do { try Names.validateIdentifier(id, what: "agent id") } catch { throw ValidationError("--agent-id: \(error)") }
        guard let state = stateDir ?? file.stateDir else { throw ValidationError("give --state-dir (or state-dir in the config file)") }
        var flagSize: UInt64?
        if let s = rotateSize {
            guard let b = ByteSize.parse(s) else { throw ValidationError("--rotate-size must be a size in bytes such as 1048576, 512K or 64M; got '\(s)'") }
            flagSize = b
        }
        if let a = rotateAge, !(a > 0) { throw ValidationError("--rotate-age must be a positive number of seconds") }
        if let a = settle, !(a > 0 && a.isFinite) { throw ValidationError("--settle must be a positive number of seconds") }
        // Flag spools replace file spools of the same name.
        let fromFlags = try parsedSpools()
        var spools = file.spools.filter { f in !fromFlags.contains { $0.name == f.name } } + fromFlags
        guard Set(spools.map(\.name)).count == spools.count else { throw ValidationError("each spool needs its own name") }
        guard !spools.isEmpty else { throw ValidationError("give at least one --spool NAME=DIR or --logs NAME=DIR[:GLOB] (or spools in the config file)") }
        // Rotation: a spool's own setting in the file, else the flag, else the file's default.
        for i in spools.indices where spools[i].logs != nil {
            let name = spools[i].name
            let fileOwn = fromFlags.contains { $0.name == name } ? false : true
            if !(fileOwn && file.ownRotateSize.contains(name)), let size = flagSize ?? file.rotateSize { spools[i].logs!.rotateSize = size }
            if !(fileOwn && file.ownRotateAge.contains(name)), let age = rotateAge ?? file.rotateAge { spools[i].logs!.rotateAge = age }
        }
        // Settle time: a blob spool's own setting in the file, else the flag, else the file's default.
        for i in spools.indices where spools[i].logs == nil {
            let fileOwn = !fromFlags.contains { $0.name == spools[i].name } && file.ownSettle.contains(spools[i].name)
            if !fileOwn, let t = settle ?? file.settle { spools[i].settle = t }
        }
        var c = AgentConfig(collector: endpoint, agentID: id, stateDir: state, spools: spools)
        c.archiveDir = archiveDir ?? file.archiveDir
        c.once = once
        c.timeout = timeout ?? file.timeout ?? 300
        c.ioTimeout = ioTimeout ?? file.ioTimeout ?? 30
        if let path = secretFile ?? file.secretFile {
            do {
                c.secret = try AgentSecrets.parseSecret(try Files.readPrivateFile(path, what: "secret file"))
            } catch let e as AgentSecrets.ParseError {
                throw ValidationError("secret file \(path): \(e)")
            } catch {
                throw ValidationError("\(error)")
            }
        }
        guard c.timeout > 0, c.ioTimeout > 0 else { throw ValidationError("timeouts must be positive") }
        return c
    }

    /// The control socket and the metrics listener as configured: flags over the file.
    func observed() throws -> ObservedSettings {
        let f = try configPath(given: config, defaultPath: AgentFileConfig.defaultPath).map { try AgentFileConfig.load(path: $0) }
        do {
            return try ObservedSettings(controlSocket: controlSocket, metricsListen: metricsListen, metricsPortFile: metricsPortFile,
                                        file: (f?.controlSocket, f?.metricsListen, f?.metricsPortFile))
        } catch let e as ObservedSettings.Invalid {
            throw ValidationError(e.description)
        }
    }

    var level: String { logLevel ?? "info" }

    func validate() throws {
        _ = try resolved()
        _ = try observed()
    }

    func run() throws {
        var current = try resolved()
        let fileLevel = try configPath(given: self.config, defaultPath: AgentFileConfig.defaultPath).map { try AgentFileConfig.load(path: $0).logLevel } ?? nil
        guard let level = Logger.Level.parse(logLevel ?? fileLevel ?? "info") else {
            throw ValidationError("--log-level must be one of trace, debug, info, notice, warning, error, critical; got '\(logLevel ?? "")'")
        }
        Processes.fixMallocMmapThreshold()
        // The reaper holds up to a batch of acknowledged files open while it removes them.
        Processes.raiseDescriptorLimit()
        SpoolshipLogging.bootstrap(level: level)
        var logger = Logger(label: "spoolship-agent")
        logger[metadataKey: "agent.id"] = "\(current.agentID)"
        SpoolshipLogging.logFileOpeningRoute(logger)
        // The process's figures, kept across reloads; counted in Prometheus metrics too with
        // --metrics-listen.
        let settings = try observed()
        agentFixedAtStart.record(settings)
        let factory = settings.metrics == nil ? nil : SpoolshipMetricsFactory()
        let stats = factory.map { AgentStats(factory: $0) } ?? AgentStats()
        let gauges = factory.map { AgentGauges(factory: $0) }
        // The running agent, and what the signal thread asks of the main loop.
        let running = Locked<Agent?>(nil)
        let started = Locked<AgentConfig>(current)
        let reloads = Locked<ReloadControl>(ReloadControl())
        let once = self.once
        Signals.handle { [self] sig in
            if sig != SIGHUP {
                reloads.withLock { $0.stop = true }
                running.withLock { $0 }?.stop()
                return
            }
            guard !once else { return }
            reload(logger: logger, running: running, control: reloads)
        }
        // What status and the metrics read: the running agent's, or the figures alone while
        // none runs (starting, between two agents at a reload, stopping).
        let currentStatus: @Sendable () -> AgentStatus = {
            running.withLock { $0 }?.status()
                ?? AgentStatus.idle(config: started.withLock { $0 }, stats: stats.snapshot(), state: reloads.withLock { $0.stop } ? "stopping" : "starting")
        }
        // After Signals.handle: its thread must start with the signals blocked.
        let control: ControlServer?
        do {
            // A one-off --once run takes no socket unless given one: the default path is the
            // service's, and a run as root would leave root-owned files in its directory.
            let socketPath = settings.controlSocket ?? (once ? ControlSocketPath.off : nil)
            control = try ControlServer.startIfConfigured(path: socketPath, defaultName: "agent", logger: logger) { line in
                ControlServer.answer(line, daemon: "agent") { (try? StatusFormat.encoder().encode(currentStatus())) ?? Data() }
            }
        } catch {
            logger.critical("cannot start", metadata: ["error": "\(error)"])
            FileHandle.standardError.write(Data("spoolship-agent: \(LogText.escaped("\(error)"))\n".utf8))
            throw ExitCode(1)
        }
        defer { control?.stop() }
        var metricsServer: MetricsServer?
        if let m = settings.metrics, let factory = factory, let gauges = gauges {
            let health = current.ioTimeout + current.connectTimeout
            do {
                metricsServer = try MetricsServer(listen: m.listen, portFile: m.portFile, logger: logger, render: {
                    gauges.updateIfDue(currentStatus)
                    return factory.registry.emitToBuffer()
                }, health: {
                    if reloads.withLock({ $0.stop }) { return "stopping" }
                    return Heartbeats.shared.unhealthy(limit: health)
                })
            } catch {
                logger.critical("cannot start", metadata: ["error": "cannot listen for metrics on \(m.listen): \(error)"])
                FileHandle.standardError.write(Data("spoolship-agent: cannot listen for metrics on \(m.listen): \(LogText.escaped("\(error)"))\n".utf8))
                throw ExitCode(1)
            }
            metricsServer?.start()
        }
        defer { metricsServer?.stop() }
        // A loop may legitimately wait up to a connect plus an I/O deadline.
        Heartbeats.shared.startWatchdog(logger: logger, minimumStale: current.ioTimeout + current.connectTimeout) {
            running.withLock { $0 }?.statusLine() ?? "starting"
        }
        var shipped = (segments: 0, bytes: UInt64(0))
        var previous: AgentConfig?
        while true {
            let agent: Agent
            var agentLogger = logger
            agentLogger[metadataKey: "agent.id"] = "\(current.agentID)"
            do {
                agent = try Agent(config: current, logger: agentLogger, stats: stats)
            } catch {
                guard let old = previous else {
                    logger.critical("agent stopped", metadata: ["error": "\(error)"])
                    FileHandle.standardError.write(Data("spoolship-agent: \(LogText.escaped("\(error)"))\n".utf8))
                    throw ExitCode(1)
                }
                logger.error("reload failed; going back to the previous configuration", metadata: ["error": "\(error)"])
                current = old
                previous = nil
                continue
            }
            running.withLock { $0 = agent }
            started.withLock { $0 = current }
            if reloads.withLock({ $0.stop }) { agent.stop() }
            if reloads.withLock({ c -> Bool in defer { c.reloadWaiting = false }; return c.reloadWaiting }) {
                // A SIGHUP came while no agent was running: take it now.
                startThread("reload") { [self] in reload(logger: logger, running: running, control: reloads) }
            }
            // --once on a terminal: a progress bar on standard error until the run ends.
            let bar = once ? TerminalProgress.startIfTerminal() : nil
            let stopBar = DispatchSemaphore(value: 0)
            let barEnded = DispatchSemaphore(value: 0)
            if let bar = bar {
                _ = startThread("progress") {
                    let started = monotonicNow()
                    repeat {
                        bar.draw(Self.progressLine(agent.progress(), elapsed: monotonicNow() - started))
                    } while stopBar.wait(timeout: .now() + 0.2) == .timedOut
                    bar.draw(Self.progressLine(agent.progress(), elapsed: monotonicNow() - started), force: true)
                    bar.finish(keep: true)
                    barEnded.signal()
                }
            }
            // Ended before the agent's last words, so that they do not land on the bar's line.
            var barRunning = bar != nil
            func endBar() { if barRunning { barRunning = false; stopBar.signal(); barEnded.wait() } }
            defer { endBar() }
            do {
                try agent.run()
            } catch {
                endBar()
                running.withLock { $0 = nil }
                agent.close()
                logger.critical("agent stopped", metadata: ["error": "\(error)"])
                FileHandle.standardError.write(Data("spoolship-agent: \(LogText.escaped("\(error)"))\n".utf8))
                throw ExitCode(1)
            }
            running.withLock { $0 = nil }
            if agent.threadsLeft > 0 {
                // Its threads still use the state dir: another agent must not open it.
                logger.critical("the agent did not stop cleanly; exiting", metadata: ["threads": "\(agent.threadsLeft)"])
                throw ExitCode(1)
            }
            agent.close()
            shipped.segments += agent.shippedSegments
            shipped.bytes += agent.shippedBytes
            let (stop, next) = reloads.withLock { (c: inout ReloadControl) -> (Bool, AgentConfig?) in
                let r = (c.stop, c.next)
                c.next = nil
                return r
            }
            if stop || next == nil { break }
            previous = current
            current = next!
            logger.notice("configuration reloaded; starting again", metadata: ["spools": "\(current.spools.map(\.name).joined(separator: ","))"])
        }
        if once {
            logger.info("all segments shipped", metadata: ["segments": "\(shipped.segments)", "bytes": "\(shipped.bytes)"])
        } else {
            logger.info("stopped", metadata: ["segments": "\(shipped.segments)", "bytes": "\(shipped.bytes)"])
        }
    }

    /// `shipping [####      ] 12/300 segments, 45.0/120.0 MiB, 80.5 MiB/s, 2 s left`; while
    /// the spools are still being scanned the totals may grow (`300+`) and no time is told.
    static func progressLine(_ p: Agent.Progress, elapsed: Double) -> String {
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

    /// SIGHUP: reads the config file and the flags again. A configuration that does not load
    /// or whose spools cannot be opened is refused, and the running agent goes on. Otherwise
    /// the running agent stops gracefully (its state is saved) and the main loop starts one
    /// with the new configuration, in the same process.
    func reload(logger: Logger, running: Locked<Agent?>, control: Locked<ReloadControl>) {
        guard let agent = running.withLock({ $0 }) else {
            // Starting, or between two agents: the main loop takes it once one runs.
            control.withLock { $0.reloadWaiting = true }
            logger.notice("reload requested while starting; it follows the start")
            return
        }
        Systemd.reloading()
        logger.notice("reloading the configuration")
        do {
            let next = try resolved()
            try Agent.preflight(next)
            let ignored = agentFixedAtStart.changed(try observed())
            if !ignored.isEmpty {
                logger.warning("these settings take effect only at a restart; keeping the running ones", metadata: ["keys": "\(ignored.joined(separator: ", "))"])
            }
            let fileLevel = try configPath(given: self.config, defaultPath: AgentFileConfig.defaultPath).map { try AgentFileConfig.load(path: $0).logLevel } ?? nil
            if let l = Logger.Level.parse(logLevel ?? fileLevel ?? "info") { SpoolshipLogging.setLevel(l) }
            if next == (control.withLock { $0.next } ?? agent.config) {
                logger.notice("configuration unchanged")
                Systemd.ready(status: agent.statusLine())
                return
            }
            control.withLock { $0.next = next }
            agent.stop(notify: false)
        } catch {
            logger.error("reload failed; keeping the running configuration", metadata: ["error": "\(error)"])
            Systemd.ready(status: agent.statusLine())
        }
    }
}

/// What the signal thread asks of the main loop.
struct ReloadControl {
    var stop = false
    /// The configuration to start with once the running agent has stopped.
    var next: AgentConfig?
    /// A SIGHUP arrived while no agent was running.
    var reloadWaiting = false
}

/// The control socket and the metrics listener as started: a reload does not move them.
let agentFixedAtStart = FixedAtStart()
