import ArgumentParser
import SpoolshipDaemon
import SpoolshipCollector

struct CollectorCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "spoolship-collector",
        abstract: "Receive segments from spoolship agents, commit them durably, acknowledge them.",
        discussion: """
        Committed segments appear under DATA_DIR/<agent-id>/<spool>/; partial data lives in \
        DATA_DIR/.spoolship. Example: spoolship-collector --listen 0.0.0.0:7070 --data-dir /srv/spool
        """)

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

    @Option(help: ArgumentHelp("How a commit batch's data is made durable: filesystem (one syncfs of the data dir's file system for the batch, the default) or file (each file's own fdatasync, for a file system other programs write much to).", valueName: "mode"))
    var commitSync: String?

    @OptionGroup var daemon: DaemonOptions<CollectorKind>

    var flags: CollectorFlags {
        var f = CollectorFlags()
        f.common = daemon.flags
        f.listen = listen
        f.dataDir = dataDir
        f.portFile = portFile
        f.maxSegmentSize = maxSegmentSize
        f.handshakeTimeout = handshakeTimeout
        f.idleTimeout = idleTimeout
        f.checkpointBytes = checkpointBytes
        f.partialMaxAge = partialMaxAge
        f.freeSpaceReserve = freeSpaceReserve
        f.maxPartialBytes = maxPartialBytes
        f.maxFrameBody = maxFrameBody
        f.maxConnections = maxConnections
        f.agents = agents
        f.commitSync = commitSync
        return f
    }

    /// The settings are resolved once, here (a usage error stops the collector with exit
    /// 64; a socket from systemd counts as --listen); the rest is `CollectorDaemon`'s.
    func run() throws {
        let flags = self.flags
        let settings = try usageErrors { try CollectorSettings.resolve(flags, socketActivated: CollectorDaemon.socketActivated) }
        let status = CollectorDaemon.run(settings, flags: flags)
        if status != 0 { throw ExitCode(status) }
    }
}
