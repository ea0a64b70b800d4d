import ArgumentParser
import Foundation
import Glibc
import Logging
import SpoolshipCore
import SpoolshipDaemon
import SpoolshipIO

struct CollectorCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "spoolship-collector",
        abstract: "Receive segments from spoolship agents, commit them durably, acknowledge them.",
        discussion: """
        Committed segments appear under DATA_DIR/<agent-id>/<spool>/; partial data lives in \
        DATA_DIR/.spoolship. Example: spoolship-collector --listen 0.0.0.0:7070 --data-dir /srv/spool
        """)

    @Option(help: "Address to listen on, HOST:PORT (port 0: any free port).")
    var listen: String

    @Option(help: "Directory that receives committed segments.")
    var dataDir: String

    @Option(help: "Write the bound port to this file once listening (for scripts and tests).")
    var portFile: String?

    @Option(help: "Largest segment accepted, in bytes.")
    var maxSegmentSize: UInt64 = 1 << 40

    @Option(help: "Seconds a peer may take to say hello.")
    var handshakeTimeout: Double = 10

    @Option(help: "Seconds of silence after which a connection is dropped.")
    var idleTimeout: Double = 60

    @Option(help: "Bytes between durable checkpoints of a long transfer.")
    var checkpointBytes: Int64 = 64 << 20

    @Option(help: "Seconds after which an untouched partial is removed at start.")
    var partialMaxAge: Double = 7 * 86400

    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: String = "info"

    func validate() throws {
        guard Endpoint(listen) != nil else { throw ValidationError("--listen must be HOST:PORT, got '\(listen)'") }
        guard Logger.Level.parse(logLevel) != nil else { throw ValidationError("--log-level must be one of trace, debug, info, notice, warning, error, critical; got '\(logLevel)'") }
        guard handshakeTimeout > 0, idleTimeout > 0 else { throw ValidationError("timeouts must be positive") }
        guard checkpointBytes > 0 else { throw ValidationError("--checkpoint-bytes must be positive") }
        guard partialMaxAge > 0 else { throw ValidationError("--partial-max-age must be positive") }
    }

    func run() throws {
        SpoolshipLogging.bootstrap(level: Logger.Level.parse(logLevel)!)
        let logger = Logger(label: "spoolship-collector")
        var config = CollectorConfig(listen: Endpoint(listen)!, dataDir: dataDir)
        config.portFile = portFile
        config.maxSegmentSize = maxSegmentSize
        config.handshakeTimeout = handshakeTimeout
        config.idleTimeout = idleTimeout
        config.checkpointBytes = checkpointBytes
        config.partialMaxAge = partialMaxAge
        let stop = StopRequest()
        Signals.handle { sig in
            if sig == SIGHUP { return }  // nothing to reload yet: the configuration is all flags
            stop.request()
        }
        let collector: Collector
        do {
            collector = try Collector(config: config, logger: logger)
        } catch {
            logger.critical("cannot start", metadata: ["error": "\(error)"])
            throw ExitCode(1)
        }
        stop.onRequest { collector.stop() }
        collector.run()
    }
}

CollectorCommand.main()
