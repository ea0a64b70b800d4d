import ArgumentParser
import SpoolshipDaemon
import SpoolshipAgent

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

    @Option(help: ArgumentHelp("A log spool whose producers never reopen their files, NAME=DIR[:GLOB]: the files are followed, not renamed, and their growth shipped as byte ranges (reopen = \"never\"); may repeat.", valueName: "name=dir[:glob]"))
    var followLogs: [String] = []

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

    @Option(help: "This agent's secret, on one line, in a file of mode 0600 (the collector's --agents lists it).")
    var secretFile: String?

    @Option(help: ArgumentHelp("TLS: the name (or IP address) the collector's certificate must hold (default: the host of --collector).", valueName: "name"))
    var tlsServerName: String?

    @OptionGroup var daemon: DaemonOptions<AgentKind>

    var flags: AgentFlags {
        var f = AgentFlags()
        f.common = daemon.flags
        f.collector = collector
        f.agentID = agentId
        f.stateDir = stateDir
        f.spool = spool
        f.logs = logs
        f.followLogs = followLogs
        f.rotateSize = rotateSize
        f.rotateAge = rotateAge
        f.settle = settle
        f.archiveDir = archiveDir
        f.once = once
        f.timeout = timeout
        f.ioTimeout = ioTimeout
        f.secretFile = secretFile
        f.tlsServerName = tlsServerName
        return f
    }

    /// The settings are resolved once, here (a usage error stops the agent with exit 64);
    /// the rest is `AgentDaemon`'s.
    func run() throws {
        let flags = self.flags
        let settings = try usageErrors { try AgentSettings.resolve(flags) }
        let status = AgentDaemon.run(settings, flags: flags)
        if status != 0 { throw ExitCode(status) }
    }
}
