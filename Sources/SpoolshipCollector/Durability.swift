import Foundation
import Glibc
import Logging
import SpoolshipCore
import SpoolshipDaemon
import SpoolshipIO

// Checkpoint and commit: what makes a connection's bytes durable and acknowledges them. The
// durability rules kept here (docs/ARCHITECTURE.md, and ../shared/DESIGN.md, define them):
//
//   R1  An acknowledged offset never exceeds the last successful fdatasync of that file; a new
//       file counts only after its directory is fsynced. `checkpoint` acknowledges what the
//       file held before its fdatasync began, and syncs the partial directory first for a new
//       file; `commit` acknowledges only after the file's fdatasync, the rename, the spool
//       directory's fsync and the ledger's fdatasync.
//   R2  An fsync, fdatasync or close error poisons the file: never retried and then trusted.
//       `checkpoint` poisons the transfer and unlinks the partial at once; `commit` discards the
//       partial (or takes the renamed files back out) and has the agent send it again; a ledger
//       that fails to sync stops all acknowledgement for its agent until a restart.
//   R5  Every segment's checksum is checked before the commit rename and the acknowledgement:
//       the checksum trails the transfer at each checkpoint, and `commit` reads the tail and
//       compares it with the agent's.
//
// (R3, the partial's one descriptor, is `PartialFile`'s; the resume at an offer, which syncs
// a partial before answering from it, is in ConnectionAdmission.swift.)

/// One connection's durability thread: it takes checkpoint and commit jobs from the reader
/// thread, runs them in order (commits that queue up together become one group commit), and
/// sends their acknowledgements.
///
/// `@unchecked Sendable`: the reader thread queues (`checkpointIfDue`, `commit`) and stops it
/// (`finish`) while the durability thread runs `loop`; `queue`, `closing` and `started` are
/// touched only under `jobs`. Everything else is `let`s of Sendable types.
final class Durability: @unchecked Sendable {
    enum Job {
        case checkpoint(Transfer)
        case commit(Transfer)
    }

    private let store: AgentStore
    private let logger: Logger
    private let sender: FrameSender
    private let collectorStats: CollectorStats
    private let stats: ConnectionStats
    private let checkpointBytes: Int64
    private let checkpointInterval: Double
    private let commitSync: CommitSync
    private let jobs = NSCondition()
    private var queue: [Job] = []
    /// Segments queued for a commit that has not ended yet (committed or failed), by key.
    private var committing: [SegmentKey: Int] = [:]
    private var closing = false
    private var started = false
    private let done = Latch()

    init(store: AgentStore, logger: Logger, sender: FrameSender, collectorStats: CollectorStats, stats: ConnectionStats, config: CollectorConfig) {
        self.store = store
        self.logger = logger
        self.sender = sender
        self.collectorStats = collectorStats
        self.stats = stats
        checkpointBytes = config.checkpointBytes
        checkpointInterval = config.checkpointInterval
        commitSync = config.commitSync
    }

    /// Starts the durability thread.
    func start(name: String) {
        jobs.lock(); started = true; jobs.unlock()
        startThread(name) { [self] in loop() }
    }

    /// Lets the durability thread finish what was queued (what was fully received), then
    /// returns once it has ended.
    func finish() {
        jobs.lock(); closing = true; jobs.broadcast()
        let wasStarted = started
        jobs.unlock()
        if wasStarted { done.wait(timeout: 3600) }
    }

    // MARK: the reader's side

    /// Checkpoint scheduling, on the reader thread as a splice lands bytes: a durable
    /// checkpoint every `checkpointBytes` of a segment, or every `checkpointInterval` seconds,
    /// whichever comes first, one at a time per transfer.
    func checkpointIfDue(_ t: Transfer, reached: Int64) {
        guard t.checkpointDue(reached: reached, now: monotonicNow(), bytes: checkpointBytes, seconds: checkpointInterval) else { return }
        enqueue(.checkpoint(t))
    }

    /// The whole segment has arrived: commit it.
    func commit(_ t: Transfer) {
        jobs.lock()
        committing[t.key, default: 0] += 1
        jobs.unlock()
        enqueue(.commit(t))
    }

    /// Waits until no commit of `key` is queued or running: an offer of a segment that this
    /// connection has received whole is answered once its commit has ended, from the ledger,
    /// and never starts a second copy of it (nor meets its partial).
    func waitForCommit(of key: SegmentKey) {
        jobs.lock()
        while committing[key] != nil { jobs.wait() }
        jobs.unlock()
    }

    private func enqueue(_ job: Job) {
        jobs.lock()
        queue.append(job)
        jobs.signal()
        jobs.unlock()
    }

    // MARK: the durability thread

    private func loop() {
        defer { done.open() }
        while true {
            jobs.lock()
            while queue.isEmpty && !closing { jobs.wait() }
            let batch = queue
            queue.removeAll()
            let last = closing && batch.isEmpty
            jobs.unlock()
            if last { return }
            var commits: [Transfer] = []
            for job in batch {
                switch job {
                case .checkpoint(let t): checkpoint(t)
                case .commit(let t): commits.append(t)
                }
            }
            if !commits.isEmpty {
                commit(commits)
                jobs.lock()
                for t in commits {
                    if let n = committing[t.key], n > 1 { committing[t.key] = n - 1 } else { committing[t.key] = nil }
                }
                jobs.broadcast()
                jobs.unlock()
            }
        }
    }

    /// Syncs what the partial holds and tells the agent. R1: the offset acknowledged is what
    /// the file held before the fdatasync began, never more.
    private func checkpoint(_ t: Transfer) {
        defer { t.checkpointFinished() }
        // An unnamed partial cannot be resumed, so a checkpoint of it would promise nothing.
        guard let fd = t.file.descriptor, !t.poisoned, !t.retired, !t.file.isUnnamed else { return }
        let reached = t.written
        guard reached > t.synced else { return }
        do {
            let syncStart = monotonicNow()
            defer { collectorStats.fsync(.partial, seconds: monotonicNow() - syncStart) }
            try Files.fdatasync(fd)
            if !t.file.entrySynced {
                try Files.fsync(store.partialDir)
                t.file.markEntrySynced()
            }
            t.synced = reached
            // The checksum trails the transfer here, off the reader's thread, so the commit
            // only has the tail left to read.
            var (crc, from) = t.checksum
            try Files.checksum(fd, from: from, to: reached, into: &crc)
            t.checksum = (crc, reached)
        } catch {
            logger.error("checkpoint sync failed; the partial is poisoned", metadata: ["path": "\(t.label)", "error": "\(error)"])
            collectorStats.error(.sync)
            t.poisoned = true
            // R2: its name goes now, not at the end of the connection, so that no later offer
            // (after a crash, say) can find it, sync it again and trust it. The reader finishes
            // the frame into the nameless file. (A retired transfer's file is the newer
            // offer's: it is that one's to judge.)
            if !t.retired { _ = try? Files.unlink(store.partialDir, t.partialName, label: t.label) }
            return
        }
        // A failed send means the connection is going away; the partial stays good.
        try? sender.send([.checkpoint(tag: t.tag, offset: UInt64(reached))])
    }

    /// Makes the data of a batch's files durable (R1): returns each file's error, or nil.
    ///
    /// With `commit-sync = filesystem` (the default) and more than one file, one sync of the
    /// whole file system (`GroupSync`: syncfs, then an fsync whose flush comes after syncfs's
    /// last writes), shared with the other connections' batches, stands for the files'
    /// fdatasyncs: one flush for the batch instead of one a file. If it fails, the error
    /// cannot be pinned on a file (syncfs reports any writeback error of the file system), so
    /// every file then gets its own fdatasync, which reports the error of its own pages, and
    /// only the files whose fdatasync fails are poisoned (R2); the others are durable by it.
    /// Otherwise every file gets its own fdatasync, all at once (see SyncPool).
    private func syncData(_ fds: [OwnedFD]) -> [SyscallError?] {
        let timed: @Sendable (Double) -> Void = { [collectorStats] seconds in collectorStats.fsync(.partial, seconds: seconds) }
        guard fds.count > 1, commitSync == .filesystem, Files.syncfsReportsErrors else { return SyncPool.shared.fdatasyncAll(fds, timed: timed) }
        guard let error = store.dataDir.groupSync.sync(timed: { [collectorStats] in collectorStats.fsync(.filesystem, seconds: $0) }) else {
            return Array(repeating: nil, count: fds.count)
        }
        let each = SyncPool.shared.fdatasyncAll(fds, timed: timed)
        logger.warning("the file system sync of a commit batch failed; each file was synced on its own to find those it concerns", metadata: [
            "error": "\(error)", "files": "\(fds.count)", "files.failed": "\(each.compactMap { $0 }.count)"])
        return each
    }

    /// Group commit: make the segments' data durable (`syncData`), verify each, rename or link
    /// each into place, then sync each touched directory once (or the file system once, after
    /// links) and the ledger once, then acknowledge them all.
    private func commit(_ batch: [Transfer]) {
        var done: [(Transfer, String)] = []
        var replies: [Frame] = []
        var dirs: [String: OwnedFD] = [:]
        let started = monotonicNow()
        let fds = batch.compactMap { $0.poisoned ? nil : $0.file.descriptor }
        let syncErrors = syncData(fds)
        let synced = monotonicNow()
        var tailBytes: Int64 = 0
        // Whether an unnamed partial was linked into place: its inode's link count is then
        // made durable with the directories.
        var linked = false
        var syncError: [ObjectIdentifier: SyscallError] = [:]
        for (fd, e) in zip(fds, syncErrors) { if let e = e { syncError[ObjectIdentifier(fd)] = e } }
        for t in batch {
            do {
                guard !t.poisoned else { throw SyscallError(call: "fdatasync", path: t.label, errno: EIO) }
                guard let fd = t.file.descriptor else { throw DaemonError("no partial file for \(t.key.name)") }
                if let e = syncError[ObjectIdentifier(fd)] { throw e }
                // R5: the checksum of every byte, the tail the checkpoints had not covered yet.
                var (crc, from) = t.checksum
                tailBytes += Int64(t.key.size) - from
                try Files.checksum(fd, from: from, to: Int64(t.key.size), into: &crc)
                t.checksum = (crc, Int64(t.key.size))
                // R3: the final sync is done; the descriptor closes here (an unnamed file's
                // once it has its name, which it is given through the descriptor).
                let unnamed = t.file.isUnnamed
                if !unnamed { try t.file.close() }
                guard crc.value == t.key.crc else {
                    logger.error("checksum mismatch; discarding the partial", metadata: [
                        "spool.name": "\(t.key.spool)", "segment.name": "\(t.key.name)",
                        "crc.expected": "\(hex32(t.key.crc))", "crc.received": "\(hex32(crc.value))"])
                    if unnamed { try? t.file.close() } else { _ = try? Files.unlink(store.partialDir, t.partialName, label: t.label) }
                    collectorStats.error(.checksum)
                    replies.append(.error(code: ErrorCode.checksumMismatch.rawValue, tag: t.tag,
                                          message: "checksum mismatch for \(t.key.spool)/\(t.key.name): expected \(hex32(t.key.crc)), received \(hex32(crc.value)); send it again"))
                    continue
                }
                let dir = try store.spoolDir(t.key.spool)
                let name = try store.commitName(t.file, spool: t.key.spool, name: t.key.name, into: dir)
                if unnamed {
                    linked = true
                    do {
                        try t.file.close()
                    } catch {
                        // R2: the close failed after the link; the name goes again.
                        _ = try? Files.unlink(dir, name, label: store.dataDir.layout.segmentPath(agent: store.id, spool: t.key.spool, name: name))
                        throw error
                    }
                }
                if name != t.key.name {
                    logger.warning("name already taken by a different file; committed under another name", metadata: [
                        "spool.name": "\(t.key.spool)", "segment.name": "\(t.key.name)", "stored.name": "\(name)"])
                }
                dirs[t.key.spool] = dir
                done.append((t, name))
            } catch {
                // R2: an fsync or close error poisons the file; discard it, the agent resends.
                logger.error("commit failed; discarding the partial", metadata: ["path": "\(t.label)", "error": "\(error)"])
                collectorStats.error((error as? SyscallError).map { ["fdatasync", "fsync", "close"].contains($0.call) } == true ? .sync : .commit)
                let unnamed = t.file.isUnnamed
                try? t.file.close()
                if !unnamed { _ = try? Files.unlink(store.partialDir, t.partialName, label: t.label) }
                replies.append(.error(code: ErrorCode.ioError.rawValue, tag: t.tag, message: "could not commit \(t.key.spool)/\(t.key.name): \(error); send it again"))
            }
        }
        do {
            // A linked file's new link count is in its inode, which a directory's fsync does
            // not write on every file system (ext4 without a journal): the file system's sync,
            // shared with the other connections, writes both.
            let linkSync = linked ? store.dataDir.groupSync.sync(timed: { [collectorStats] in collectorStats.fsync(.filesystem, seconds: $0) }) : nil
            if linked, let e = linkSync {
                // Not pinned on a file: each linked file is synced on its own (its inode), and
                // those whose sync fails go back out (R2); then the directories.
                var kept: [(Transfer, String)] = []
                for (t, name) in done {
                    let label = store.dataDir.layout.segmentPath(agent: store.id, spool: t.key.spool, name: name)
                    guard let dir = dirs[t.key.spool] else { continue }
                    do {
                        try Files.fsync(try Files.openBeneath(dir, name, O_RDONLY, label: label))
                        kept.append((t, name))
                    } catch {
                        _ = try? Files.unlink(dir, name, label: label)
                        collectorStats.error(.sync)
                        replies.append(.error(code: ErrorCode.ioError.rawValue, tag: t.tag, message: "could not sync the commit of \(t.key.name): \(error); send it again"))
                    }
                }
                logger.warning("the file system sync after a commit batch's links failed; each file was synced on its own", metadata: [
                    "error": "\(e)", "files": "\(done.count)", "files.failed": "\(done.count - kept.count)"])
                done = kept
            }
            if !linked || linkSync != nil {
                for dir in dirs.values { try Files.fsync(dir) }
            }
        } catch {
            // R2: the new directory entries are not known durable, and a second fsync would
            // not prove they are. Take the files back out and have the agent send them again.
            logger.error("directory sync failed at commit; discarding the batch", metadata: ["error": "\(error)"])
            collectorStats.error(.commit)
            for (t, name) in done {
                if let dir = dirs[t.key.spool] { _ = try? Files.unlink(dir, name, label: store.dataDir.layout.segmentPath(agent: store.id, spool: t.key.spool, name: name)) }
                replies.append(.error(code: ErrorCode.ioError.rawValue, tag: t.tag, message: "could not sync the commit of \(t.key.name): \(error); send it again"))
            }
            try? sender.send(replies)
            return
        }
        do {
            let now = Int64(Date().timeIntervalSince1970)
            try store.record(done.map { LedgerEntry(key: $0.0.key, stored: $0.1, time: now) }) { [collectorStats] in collectorStats.fsync(.ledger, seconds: $0) }
            let finished = monotonicNow()
            let bytes = done.reduce(UInt64(0)) { $0 + $1.0.key.size }
            collectorStats.committed(segments: done.count, bytes: bytes)
            stats.committed(segments: done.count, bytes: bytes)
            for (t, name) in done {
                replies.append(.committed(tag: t.tag, storedName: name))
                logger.debug("committed", metadata: ["spool.name": "\(t.key.spool)", "segment.name": "\(name)", "bytes": "\(t.key.size)"])
            }
            // What the commit cost, for tuning: the final syncs, then the checksum of the bytes
            // that the checkpoints had not yet covered, renames, directory syncs and the ledger.
            logger.debug("commit batch", metadata: [
                "segments": "\(done.count)", "sync.ms": "\(Int((synced - started) * 1000))",
                "checksum.tail_bytes": "\(tailBytes)", "rest.ms": "\(Int((finished - synced) * 1000))"])
        } catch {
            // The ledger could not be synced: no acknowledgement, and the store refuses this
            // agent until the collector restarts and reads its ledger afresh (R2: a sync is
            // never retried and then trusted). The committed files themselves are durable.
            logger.critical("ledger sync failed; refusing this agent until restart", metadata: ["path": "\(store.ledgerPath)", "error": "\(error)"])
            collectorStats.error(.ledger)
            for (t, _) in done {
                replies.append(.error(code: ErrorCode.ioError.rawValue, tag: t.tag, message: "could not sync the commit of \(t.key.name): \(error); offer it again"))
            }
        }
        if !replies.isEmpty { try? sender.send(replies) }
    }
}
