import Foundation
import Glibc
import Logging
import SpoolshipCore
import SpoolshipIO
import SpoolshipDaemon

/// The agent: a supervisor of the parts that each own one piece of its state.
///
/// | part | owns | thread |
/// |---|---|---|
/// | `SpoolDirectories` | the spools' directory handles | (watcher replaces) |
/// | `BlobSealer` | settle waits, re-seal requests, seals of blob files | watcher / scanner |
/// | `LogRotator` | each log stream's active file | rotator |
/// | `RotationTable` + `LogSealer` | rotations not sealed yet | sealer |
/// | `LogFollower` | followed log files (`reopen = "never"`): their descriptors and cut points | follower |
/// | `SegmentQueue` | sealed segments until removed | (any; the session's) |
/// | `AgentSession` | one connection's offers and answers | shipper + reader |
/// | `Reaper` | acknowledged segments until removed (R4) | reaper |
/// | `LeftBehindFiles` | files that will not ship | (any) |
/// | `AgentHealth`, `ConnectionSlot` | the connection, the last error | (any) |
///
/// The agent starts them, runs one session after another on the calling thread (backing
/// off between them), says when a `--once` run is over, and stops them all.
public final class Agent: Sendable {
    public let config: AgentConfig
    let logger: Logger
    /// The process's figures (kept across reloads): status and metrics read them.
    public let stats: AgentStats
    let journal: AgentJournal
    let threads = AgentThreads()
    let health = AgentHealth()
    let connection = ConnectionSlot()
    let dirs: SpoolDirectories
    let queue: SegmentQueue
    let leftBehind: LeftBehindFiles
    let rotations: RotationTable
    let blobs: BlobSealer
    let rotator: LogRotator
    let logSealer: LogSealer
    let follower: LogFollower
    let reaper: Reaper
    /// Log spools whose producers are told to reopen once the agent runs (a rotation was
    /// pending or finished at start).
    private let reopenAtStart: Set<String>
    /// When this agent started (wall clock).
    let startedAt = Date().timeIntervalSince1970

    /// The least wait before connecting again after ERROR 10 (agent id in use).
    static let idInUseBackoff = 5.0

    /// What new connections use for TLS: `config.tls`'s files as read last (a reload reads
    /// them again); nil with `config.tls` nil.
    let tlsContext: @Sendable () -> TLSContext?

    /// `tls`: the TLS context for each new connection (see `tlsContext`).
    public init(config: AgentConfig, logger: Logger, stats: AgentStats = AgentStats(),
                tls: @escaping @Sendable () -> TLSContext? = { nil }) throws {
        self.config = config
        tlsContext = tls
        self.logger = logger
        self.stats = stats
        stats.register(spools: config.spools.map(\.name))
        dirs = try SpoolDirectories(config)
        var archives: [String: OwnedFD] = [:]
        if let a = config.archiveDir {
            for s in config.spools {
                try Files.makeDirectories("\(a)/\(s.name)")
                let afd = try Files.openDirectory("\(a)/\(s.name)")
                guard let sdir = dirs.spool(s.name), try Files.fstat(afd).st_dev == Files.fstat(sdir).st_dev else {
                    throw DaemonError("archive dir \(a)/\(s.name) is on another file system than spool \(s.name) (\(s.directory)); acknowledged files are renamed there, so it must be on the same one")
                }
                archives[s.name] = afd
            }
        }
        journal = try AgentJournal(dir: config.stateDir, logger: logger)
        let loaded = try journal.load(logger: logger)
        let ids = SegmentIDs(next: loaded.nextID)
        queue = SegmentQueue(journal: journal, segments: loaded.segments, logger: logger, stats: stats)
        leftBehind = LeftBehindFiles(logger: logger, stats: stats)
        rotations = RotationTable(rotations: loaded.rotations, lastSeq: loaded.lastSeq)
        logSealer = LogSealer(spools: config.spools, dirs: dirs, table: rotations, queue: queue, ids: ids,
                              journal: journal, health: health, threads: threads, logger: logger)
        rotator = LogRotator(spools: config.spools, dirs: dirs, table: rotations, ids: ids, journal: journal,
                             leftBehind: leftBehind, health: health, threads: threads, logger: logger,
                             sealerWake: { [logSealer] in logSealer.wake() })
        blobs = BlobSealer(config: config, queue: queue, dirs: dirs, ids: ids, leftBehind: leftBehind, health: health,
                           threads: threads, logger: logger, stats: stats,
                           directoryBack: { [rotator] s in rotator.forgetStreams(s.name) })
        follower = LogFollower(spools: config.spools, dirs: dirs, queue: queue, ids: ids, journal: journal, leftBehind: leftBehind,
                               health: health, threads: threads, logger: logger, stats: stats,
                               lastSeq: loaded.lastSeq, positions: loaded.follows)
        let (journal, queue, rotations, follower) = (journal, queue, rotations, follower)
        reaper = Reaper(journal: journal, queue: queue, dirs: dirs, archiveDirs: archives, threads: threads, sealer: blobs,
                        logger: logger, stats: stats, compact: {
                            // Rewritten when the journal holds 4 times more lines than the state.
                            let lines = journal.appended
                            guard lines > 100_000 else { return }
                            let live = queue.all, rs = rotations.all, followed = follower.state()
                            let seqs = rotations.lastSeq.merging(followed.lastSeq, uniquingKeysWith: max)
                            guard lines > 4 * (live.count + rs.count + seqs.count + followed.positions.count) else { return }
                            do { try journal.compact(live, rotations: rs, lastSeq: seqs, follows: followed.positions) } catch {
                                logger.error("cannot compact the agent state", metadata: ["error": "\(error)"])
                            }
                        })
        reopenAtStart = try Self.recover(config: config, dirs: dirs, queue: queue, rotations: rotations, follower: follower, reaper: reaper,
                                         ids: ids, journal: journal, logger: logger)
    }

    /// Checks a configuration's spools without starting anything: each directory can be
    /// opened, no directory is configured twice, names and globs are valid. A reload runs it
    /// before it stops the running agent.
    public static func preflight(_ config: AgentConfig) throws {
        try SpoolDirectories.open(config)
    }

    // MARK: start-up recovery (R4)

    /// Acknowledged-and-present is deleted again; acknowledged-and-missing is done; a sealed
    /// segment whose file changed or vanished is dropped (and re-sealed by the scan if
    /// present); rotations are finished (`LogRecovery`). Then the journal is rewritten.
    private static func recover(config: AgentConfig, dirs: SpoolDirectories, queue: SegmentQueue, rotations: RotationTable,
                                follower: LogFollower, reaper: Reaper, ids: SegmentIDs, journal: AgentJournal, logger: Logger) throws -> Set<String> {
        // The followed files first, wherever their names are now: their ranges are read from them.
        follower.restore()
        let acked = queue.recover(
            intact: { s in
                if s.isFollowed { return follower.attach(&s) }
                guard let dir = dirs.holding(s), let st = try? Files.statAt(dir, s.name, label: s.name) else { return false }
                return s.isSealed(st)
            },
            configured: { s in dirs.holding(s) != nil })
        // Acknowledged before the last stop: their acks are journaled; finish removing them.
        reaper.recover(acked)
        let reopen = try LogRecovery.recover(spools: config.spools, dirs: dirs, table: rotations, sealed: queue.all,
                                             ids: ids, journal: journal, logger: logger)
        do {
            let followed = follower.state()
            try journal.compact(queue.all, rotations: rotations.all, lastSeq: rotations.lastSeq.merging(followed.lastSeq, uniquingKeysWith: max),
                                follows: followed.positions)
        } catch {
            // Not needed to start: the journal as it is holds the same state, only longer.
            // Appends may fail as well while the disk is full; each is retried.
            logger.error("cannot rewrite the agent state journal at start; going on with it as it is (is its file system full? free some space there)",
                         metadata: ["path": "\(config.stateDir)/\(AgentJournal.fileName)", "error": "\(error)"])
        }
        return reopen
    }

    // MARK: what becomes of a segment that cannot ship as sealed

    /// A segment whose file changed after its seal, or whose checksum the collector did not
    /// match: a log segment becomes a rotation again (the log sealer seals it anew), a blob
    /// is forgotten and its name handed to the blob watcher to seal as it is now.
    func sealAgain(_ s: Segment, reason: String) {
        if s.isFollowed {
            follower.sealAgain(s)
        } else if s.kind == .log {
            logSealer.sealAgain(s)
        } else {
            drop(s.id, reason: reason)
            blobs.requestSeal(spool: s.spool, name: s.name)
        }
    }

    /// Forgets a segment whose file vanished or changed before it was shipped (it is sealed
    /// again if it is still there).
    func drop(_ id: UInt64, reason: String) {
        guard let gone = queue.forget(id, retry: { [leftBehind] in !leftBehind.isRefused($0) }) else { return }
        let s = gone.segment
        logger.warning("segment dropped before it was shipped", metadata: ["spool.name": "\(s.spool)", "segment.name": "\(s.name)", "reason": "\(reason)"])
        if gone.sealAgain && s.kind == .blob { blobs.requestSeal(spool: s.spool, name: s.name) }
    }

    /// Forgets a segment that the collector will never take (bad name, too large): the file
    /// stays in the spool and is not offered again until the agent restarts.
    func refuse(_ id: UInt64, reason: String) {
        guard let s = queue.segment(id) else { return }
        logger.error("collector refused segment; leaving the file in place", metadata: ["spool.name": "\(s.spool)", "segment.name": "\(s.name)", "error": "\(reason)"])
        leftBehind.refusedByCollector(s, reason: reason)
        _ = queue.forget(id, retry: { _ in false })
    }

    // MARK: running

    /// With `--once`: everything found has shipped and been removed, and nothing waits to be
    /// sealed. (Rotations are read before segments: a log segment is admitted before its
    /// rotation is forgotten, so that one of the two is always seen.)
    var everythingShipped: Bool {
        rotations.isEmpty && queue.isEmpty && blobs.isIdle
    }

    /// Runs until `stop()` (or, with `once`, until everything present at start is
    /// acknowledged). Throws when `once` could make no progress for `timeout` seconds, or the
    /// collector refused the agent for good.
    public func run() throws {
        Thread.current.name = "shipper"
        threads.heartbeats.beat("shipper")
        // With --once, everything there is now is sealed by a scanner thread, and shipping
        // starts with its first batch; the run ends only after the scan. A daemon's watcher
        // scans once its watches are set, so that readiness does not wait for a backlog.
        if config.once {
            blobs.scanOnce(finished: { [self] in everythingShipped })
        }
        for name in reopenAtStart.sorted() {
            if let s = config.spools.first(where: { $0.name == name }), let l = s.logs { LogRotator.reopenProducers(s, l, logger: logger) }
        }
        if config.once {
            // Every log file with something in it is rotated now, whatever its size or age;
            // every followed file is cut to its end.
            rotator.rotatePass(all: true)
            follower.pass(all: true)
        }
        // The --once clock starts when there is something to ship, not before the scan.
        queue.progressed()
        if !config.once {
            blobs.watch(onFailure: { [self] error in
                logger.critical("spool watcher failed; stopping", metadata: ["error": "\(error)"])
                health.update { $0.fatal = "the spool watcher failed: \(error)" }
                stop()
            })
        }
        threads.spawn("reaper") { [reaper] in reaper.run() }
        if config.spools.contains(where: { $0.logs != nil && $0.logs?.follows == false }) {
            if !config.once { threads.spawn("rotator") { [rotator] in rotator.run() } }
            threads.spawn("sealer") { [logSealer] in logSealer.run() }
        }
        if !follower.isEmpty && !config.once { threads.spawn("follower") { [follower] in follower.run() } }
        threads.heartbeats.beat("shipper")
        if !blobs.watching.wait(timeout: 30) {
            logger.warning("the spool watcher is slow to start")
        }
        if !threads.isStopped { Systemd.ready(status: statusLine()) }
        defer {
            // A graceful stop finishes the deletions of what was already acknowledged, and
            // waits for every thread of this agent to end.
            stop(notify: false)
            threads.heartbeats.remove("shipper")
            reaper.waitIdle(timeout: 30)
            let left = threads.waitForAll(timeout: 60)
            if left > 0 { logger.error("threads still running after the stop", metadata: ["threads": "\(left)"]) }
        }
        var backoff = config.backoffMin
        while true {
            threads.heartbeats.beat("shipper")
            if let done = try checkFinished() { return done }
            let session = AgentSession(agent: self)
            do {
                try session.run()
                backoff = config.backoffMin
                health.update { $0.lastIDInUse = false }
            } catch let f as FatalRefusal {
                stats.error(.refused)
                health.error(f.description, at: true)
                throw f
            } catch {
                let result = session.result
                if threads.isStopped {
                    logger.info("connection closed for the stop; what the collector holds is resumed at the next start")
                } else {
                    stats.error(result.refusedByCollector ? .refused : result.established ? .connection : .connect)
                    health.error("\(error)", at: true)
                    if result.idInUse {
                        logger.error("another connection holds this agent id at the collector; two agents with one id? retrying later",
                                     metadata: ["collector": "\(config.collector)", "error": "\(error)"])
                    } else {
                        logger.warning("connection to collector failed", metadata: ["collector": "\(config.collector)", "error": "\(error)"])
                    }
                }
                if result.madeProgress { backoff = config.backoffMin }
                // Another agent holds the id: try again seldom, not at once (the other one may
                // be this agent's own earlier connection, not yet timed out at the collector).
                if result.idInUse { backoff = max(backoff, Self.idInUseBackoff) }
                health.update { $0.lastIDInUse = result.idInUse }
            }
            if let done = try checkFinished() { return done }
            // Jittered exponential backoff, interrupted by stop().
            var wait = backoff * Double.random(in: 0.5...1.0)
            if health.read().lastIDInUse { wait = max(wait, Self.idInUseBackoff) }
            backoff = min(config.backoffMax, backoff * 2)
            threads.pause(wait, beat: "shipper")
        }
    }

    /// nil to go on; () when the run is over. Throws on a `once` timeout, and when a `once`
    /// run is stopped (SIGTERM) before it shipped everything: its exit status must not say done.
    private func checkFinished() throws -> ()? {
        let h = health.read()
        if let f = h.fatal { throw DaemonError(f) }
        let pending = { [self] in rotations.count + queue.count }
        if threads.isStopped {
            if config.once && blobs.isScanning {
                throw DaemonError("stopped before every file in the spools was sealed; what is left ships on the next run")
            }
            if config.once && pending() > 0 {
                throw DaemonError("stopped with \(pending()) segment(s) not yet shipped; they ship on the next run")
            }
            return ()
        }
        guard config.once else { return nil }
        if everythingShipped {
            if let why = h.incomplete { throw DaemonError("not everything could be shipped: \(why)") }
            let list = leftBehind.all
            if !list.isEmpty {
                let shown = list.prefix(10).map { "\($0.spool)/\($0.display) (\($0.reason))" }.joined(separator: "; ")
                throw DaemonError("everything else shipped, but \(list.count) file(s) stay in the spools and will not ship: \(shown)\(list.count > 10 ? "; ..." : "")")
            }
            return ()
        }
        if !blobs.isScanning && queue.sinceProgress > config.timeout {
            var waiting = "\(queue.count) segment(s) still pending"
            let unsettled = blobs.unsettledCount
            if unsettled > 0 { waiting += ", \(unsettled) file(s) not left alone for their settle time" }
            let open = blobs.stillOpenNames
            if !open.isEmpty {
                waiting += ", \(open.count) file(s) still open for writing by some process (\(open.prefix(5).map { LogText.escaped($0) }.joined(separator: ", "))\(open.count > 5 ? ", ..." : ""))"
            }
            let rotated = rotations.count
            if rotated > 0 { waiting += " and \(rotated) rotated file(s) not sealed" }
            throw DaemonError("no progress for \(Int(config.timeout)) s shipping to \(config.collector); \(waiting); last error: \(h.lastError ?? "none")")
        }
        return nil
    }

    /// Stops the agent: no new offers, the connection shut down at once (the collector keeps
    /// what arrived), then `run` returns. `notify` says STOPPING=1 to the service manager (not
    /// for a reload, after which the process goes on).
    public func stop(notify: Bool = true) {
        if notify { Systemd.notify("STOPPING=1") }
        threads.stop()
        connection.stop()
    }

    /// Threads of this agent still running; after `run` returned, anything but 0 means the
    /// state dir is not free for another agent in this process.
    public var threadsLeft: Int { threads.running }

    /// Lets go of the state dir (its lock and journal), once `run` has returned.
    public func close() {
        journal.close()
    }

    public var shippedSegments: Int { queue.shipped.segments }
    public var shippedBytes: UInt64 { queue.shipped.bytes }

    /// Segments and bytes acknowledged by the collector since start, of all those found so
    /// far; `scanning` while `--once` may still find more.
    public struct Progress: Sendable {
        public var doneSegments = 0
        public var doneBytes: UInt64 = 0
        public var totalSegments = 0
        public var totalBytes: UInt64 = 0
        public var scanning = false
    }

    public func progress() -> Progress {
        let shipped = queue.shipped
        var p = Progress(doneSegments: shipped.segments, doneBytes: shipped.bytes,
                         totalSegments: shipped.segments, totalBytes: shipped.bytes, scanning: blobs.isScanning)
        for s in queue.all {
            p.totalSegments += 1
            p.totalBytes += s.size
            if s.acked { p.doneSegments += 1; p.doneBytes += s.size }
        }
        return p
    }

    /// The one-line summary for the service manager's STATUS=.
    public func statusLine() -> String {
        let h = health.read()
        let pending = queue.all.filter { !$0.acked }
        let bytes = pending.reduce(UInt64(0)) { $0 + $1.size }
        let shipped = queue.shipped
        let rotated = rotations.count
        var line = h.connectedTo.map { "connected to \(config.collector) (\($0))" } ?? "not connected to \(config.collector)"
        if h.connectedTo == nil, let e = h.lastError { line += " (last error: \(e.prefix(120)))" }
        if threads.isStopped { line = "stopping; " + line }
        line += "; \(pending.count) segment(s), \(bytes) bytes pending"
        if rotated > 0 { line += "; \(rotated) rotated file(s) to seal" }
        line += "; shipped \(shipped.segments) segment(s), \(shipped.bytes) bytes since start"
        return line
    }
}
