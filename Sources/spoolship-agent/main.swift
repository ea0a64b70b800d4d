import ArgumentParser
import Foundation
import Glibc
import Logging
import SpoolshipCore
import SpoolshipDaemon
import SpoolshipIO

struct AgentCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "spoolship-agent",
        abstract: "Ship the files of spool directories to a spoolship collector.",
        discussion: """
        Every complete file in a spool (closed after writing, or renamed in; dotfiles and *.tmp \
        are ignored) is shipped whole and removed once the collector has committed it durably. \
        Example: spoolship-agent --collector 10.0.0.5:7070 --agent-id web-1 \
        --state-dir /var/lib/spoolship --spool inbox=/var/spool/inbox
        """)

    @Option(help: "The collector, HOST:PORT.")
    var collector: String

    @Option(help: "This agent's id: 1-64 of [A-Za-z0-9._-].")
    var agentId: String

    @Option(help: "Directory for the agent's own state.")
    var stateDir: String

    @Option(help: ArgumentHelp("A blob spool, NAME=DIR; may repeat.", valueName: "name=dir"))
    var spool: [String] = []

    @Option(help: "Keep acknowledged files under DIR/<spool>/ instead of deleting them (same file system as the spools).")
    var archiveDir: String?

    @Flag(help: "Ship what is in the spools now, wait for every acknowledgement, and exit.")
    var once = false

    @Option(help: "With --once: give up after this many seconds without progress.")
    var timeout: Double = 300

    @Option(help: "Seconds of silence from the collector, with work outstanding, before reconnecting.")
    var ioTimeout: Double = 30

    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: String = "info"

    func parsedSpools() throws -> [SpoolConfig] {
        try spool.map { s in
            guard let eq = s.firstIndex(of: "="), eq != s.startIndex, s.index(after: eq) != s.endIndex else {
                throw ValidationError("--spool must be NAME=DIR, got '\(s)'")
            }
            let name = String(s[..<eq])
            do { try Names.validateIdentifier(name, what: "spool name") } catch { throw ValidationError("--spool \(s): \(error)") }
            return SpoolConfig(name: name, directory: String(s[s.index(after: eq)...]))
        }
    }

    func validate() throws {
        guard Endpoint(collector) != nil else { throw ValidationError("--collector must be HOST:PORT, got '\(collector)'") }
        do { try Names.validateIdentifier(agentId, what: "agent id") } catch { throw ValidationError("--agent-id: \(error)") }
        let spools = try parsedSpools()
        guard !spools.isEmpty else { throw ValidationError("give at least one --spool NAME=DIR") }
        guard Set(spools.map(\.name)).count == spools.count else { throw ValidationError("each --spool needs its own name") }
        guard Logger.Level.parse(logLevel) != nil else { throw ValidationError("--log-level must be one of trace, debug, info, notice, warning, error, critical; got '\(logLevel)'") }
        guard timeout > 0, ioTimeout > 0 else { throw ValidationError("timeouts must be positive") }
    }

    func run() throws {
        SpoolshipLogging.bootstrap(level: Logger.Level.parse(logLevel)!)
        var logger = Logger(label: "spoolship-agent")
        logger[metadataKey: "agent.id"] = "\(agentId)"
        var config = AgentConfig(collector: Endpoint(collector)!, agentID: agentId, stateDir: stateDir, spools: try parsedSpools())
        config.archiveDir = archiveDir
        config.once = once
        config.timeout = timeout
        config.ioTimeout = ioTimeout
        let stop = StopRequest()
        Signals.handle { sig in
            if sig == SIGHUP { return }  // reloading comes with the configuration file
            stop.request()
        }
        do {
            let agent = try Agent(config: config, logger: logger)
            stop.onRequest { agent.stop() }
            try agent.run()
            if once {
                logger.info("all segments shipped", metadata: ["segments": "\(agent.shippedSegments)", "bytes": "\(agent.shippedBytes)"])
            }
        } catch {
            logger.critical("agent stopped", metadata: ["error": "\(error)"])
            FileHandle.standardError.write(Data("spoolship-agent: \(error)\n".utf8))
            throw ExitCode(1)
        }
    }
}

AgentCommand.main()
