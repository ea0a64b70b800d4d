import Foundation
import Glibc
import Logging
import SpoolshipCore
import SpoolshipIO
import SpoolshipDaemon

/// The log sealer: turns rotations into segments. For each renamed rotation (in id order) it
/// syncs the directories if the rotator could not (R1), waits until no process holds the
/// file open for writing (warning, with the holders' pids, when that lasts), gzips it when
/// the spool says so (temp file, fdatasync, rename, directory sync), checksums it, and admits
/// the segment to the queue before it forgets the rotation. Woken by inotify when a file in a
/// rotated directory is closed after writing or moved in, and every half second regardless.
///
/// `@unchecked Sendable`: its one stored `var` is read and written only while holding `lock`;
/// the `let`s are Sendable or thread-safe.
final class LogSealer: @unchecked Sendable {
    private let spools: [SpoolConfig]
    private let dirs: SpoolDirectories
    private let table: RotationTable
    private let queue: SegmentQueue
    private let ids: SegmentIDs
    private let journal: AgentJournal
    private let health: AgentHealth
    private let threads: AgentThreads
    private let logger: Logger
    private let lock = NSLock()
    /// The sealer's watch on the rotated directories (under `lock`), woken by `wake`.
    private var watch: Inotify?

    /// A rotated file held open for writing this long gets a warning naming the holders, and
    /// again every `writerWarnEvery`.
    static let writerWarnAfter = 30.0
    static let writerWarnEvery = 60.0

    init(spools: [SpoolConfig], dirs: SpoolDirectories, table: RotationTable, queue: SegmentQueue, ids: SegmentIDs,
         journal: AgentJournal, health: AgentHealth, threads: AgentThreads, logger: Logger) {
        self.spools = spools.filter { $0.logs != nil && $0.logs?.follows == false }
        self.dirs = dirs
        self.table = table
        self.queue = queue
        self.ids = ids
        self.journal = journal
        self.health = health
        self.threads = threads
        self.logger = logger
        threads.onStop { [self] in wake() }
    }

    /// Looks at the rotations now instead of at the next timeout.
    func wake() {
        lock.lock()
        let w = watch
        lock.unlock()
        w?.wake()
    }

    private func spool(_ name: String) -> SpoolConfig? { spools.first { $0.name == name } }

    // MARK: the sealer's thread

    func run() {
        var ino: Inotify?
        var watched: [String: (UInt64, UInt64)] = [:]
        do { ino = try Inotify() } catch {
            logger.warning("cannot watch the rotated directories; sealing polls instead", metadata: ["error": "\(error)"])
        }
        lock.lock(); watch = ino; lock.unlock()
        defer { lock.lock(); watch = nil; lock.unlock() }
        while !threads.isStopped {
            threads.heartbeats.beat("sealer")
            if let ino = ino {
                // (Re)watch each rotated directory; one made again gets a new watch.
                for s in spools {
                    guard let fd = dirs.rotated(s.name), let st = try? Files.fstat(fd), st.st_nlink > 0 else { continue }
                    let id = (UInt64(st.st_dev), UInt64(st.st_ino))
                    if let w = watched[s.name], w == id { continue }
                    if (try? ino.watch("\(s.directory)/\(LogNames.rotatedDirName)", mask: UInt32(IN_CLOSE_WRITE | IN_MOVED_TO | IN_ONLYDIR))) != nil {
                        watched[s.name] = id
                    }
                }
            }
            sealPending()
            if let ino = ino {
                _ = try? ino.read(timeout: 0.5)
            } else {
                usleep(200_000)
            }
        }
    }

    /// Tries to seal every renamed rotation once.
    func sealPending() {
        for r in table.renamed {
            if threads.isStopped { return }
            sealRotation(r)
        }
    }

    private func sealRotation(_ r: Rotation) {
        guard let spool = spool(r.spool), let settings = spool.logs, let rdir = dirs.rotated(r.spool) else { return }
        let rlabel = "\(spool.directory)/\(LogNames.rotatedDirName)"
        do {
            if !r.isSynced {
                guard let dir = dirs.spool(r.spool) else { return }
                try Files.fsync(rdir)
                try Files.fsync(dir)
                table.update(r.id) { $0.directoriesSynced() }
            }
            guard let raw = try Files.openIfPresent(rdir, r.rawName, label: "\(rlabel)/\(r.rawName)") else {
                // Compressed before a crash (the raw file goes only after the .gz is in place).
                if let gz = try Files.openIfPresent(rdir, r.gzName, label: "\(rlabel)/\(r.gzName)") {
                    let st = try Files.fstat(gz)
                    let crc = try Files.checksum(gz, size: Int64(st.st_size), progress: threads.workProgress)
                    finishSeal(r, name: r.gzName, st: st, size: UInt64(st.st_size), crc: crc)
                } else {
                    rotationLost(r, why: "the rotated file vanished before it was sealed")
                }
                return
            }
            var askAgain = false
            if try stillWritten(r, raw, askAgain: &askAgain) {
                if askAgain { LogRotator.reopenProducers(spool, settings, logger: logger) }
                return
            }
            // A .gz beside the original is left from an attempt that did not finish: the
            // original is the truth.
            try Files.unlink(rdir, r.gzName, label: "\(rlabel)/\(r.gzName)")
            let st = try Files.fstat(raw)
            if UInt64(st.st_size) < r.sizeAtRotation {
                logger.error("rotated file was truncated behind the agent's back; shipping what is left", metadata: [
                    "spool.name": "\(r.spool)", "segment.name": "\(r.rawName)", "size.at.rotation": "\(r.sizeAtRotation)", "size.now": "\(st.st_size)"])
            }
            if let level = settings.compressLevel, let gz = try compress(r, raw, size: Int64(st.st_size), level: level, rdir: rdir, rlabel: rlabel) {
                // The .gz is in place; the original goes before the seal is recorded, so that
                // it can never be taken for a segment of its own later.
                try Files.unlink(rdir, r.rawName, label: "\(rlabel)/\(r.rawName)")
                try Files.fsync(rdir)
                finishSeal(r, name: r.gzName, st: gz.st, size: gz.size, crc: gz.crc)
                return
            }
            let crc = try Files.checksum(raw, size: Int64(st.st_size), progress: threads.workProgress)
            let after = try Files.fstat(raw)
            guard after.st_size == st.st_size, mtimeNanoseconds(after) == mtimeNanoseconds(st) else { return }  // written meanwhile: again
            finishSeal(r, name: r.rawName, st: st, size: UInt64(st.st_size), crc: crc)
        } catch is StoppedWork {
            return
        } catch {
            logger.error("cannot seal a rotated log file; will retry", metadata: ["spool.name": "\(r.spool)", "segment.name": "\(r.rawName)", "error": "\(error)"])
            health.error("cannot seal \(r.spool)/\(r.rawName): \(error)")
        }
    }

    /// Whether some process still holds the rotated file open for writing (a read lease is
    /// refused while anyone does; where leases are not allowed, /proc is scanned). Warns,
    /// naming the holders, when it lasts.
    private func stillWritten(_ r: Rotation, _ fd: OwnedFD, askAgain: inout Bool) throws -> Bool {
        var writers: Bool
        if let held = Files.hasWriters(fd) {
            writers = held
        } else {
            let st = try Files.fstat(fd)
            writers = !Processes.writers(dev: UInt64(st.st_dev), ino: UInt64(st.st_ino)).isEmpty
        }
        let now = monotonicNow()
        if !writers {
            if let waited = table.update(r.id, { $0.writersGone(at: now) }) ?? nil, waited >= Self.writerWarnAfter {
                logger.notice("rotated file closed by its last writer; sealing it", metadata: ["spool.name": "\(r.spool)", "segment.name": "\(r.rawName)"])
            }
            return false
        }
        guard let warn = table.update(r.id, { $0.heldByWriter(at: now, warnAfter: Self.writerWarnAfter, every: Self.writerWarnEvery) }) else { return true }
        if let waited = warn {
            let st = try? Files.fstat(fd)
            let pids = st.map { Processes.writers(dev: UInt64($0.st_dev), ino: UInt64($0.st_ino)) } ?? []
            logger.warning("rotated log file is still open for writing; it is sealed when the producer closes it (does it reopen its log?)", metadata: [
                "spool.name": "\(r.spool)", "segment.name": "\(r.rawName)", "waiting.seconds": "\(Int(waited))",
                "writer.pids": "\(pids.map(String.init).joined(separator: ","))"])
            health.error("\(r.spool)/\(r.rawName) is still open for writing by pid(s) \(pids.map(String.init).joined(separator: ","))")
            // The producer may have missed the first request (a restart in between).
            askAgain = true
        }
        return true
    }

    /// gzips a rotated file into `NAME.SEQ.gz` beside it: a temp file, fdatasync, rename,
    /// directory sync. On any failure (a full disk among them) the segment ships uncompressed,
    /// and the log says so.
    private func compress(_ r: Rotation, _ raw: OwnedFD, size: Int64, level: Int32, rdir: OwnedFD, rlabel: String) throws -> (st: stat, size: UInt64, crc: UInt32)? {
        let tmp = ".\(r.gzName).tmp"
        do {
            let out = try Files.openBeneath(rdir, tmp, O_WRONLY | O_CREAT | O_TRUNC, mode: 0o600, label: "\(rlabel)/\(tmp)")
            do {
                let result = try Gzip.compress(raw, size: size, into: out, level: level, progress: threads.workProgress)
                try Files.fdatasync(out)
                let st = try Files.fstat(out)
                try out.close()
                try Files.rename(rdir, tmp, rdir, r.gzName, label: "\(rlabel)/\(r.gzName)")
                return (st, result.size, result.crc)
            } catch {
                _ = try? Files.unlink(rdir, tmp, label: tmp)
                throw error
            }
        } catch {
            if error is StoppedWork { throw error }
            logger.warning("cannot compress a rotated log file; shipping it uncompressed", metadata: [
                "spool.name": "\(r.spool)", "segment.name": "\(r.rawName)", "error": "\(error)"])
            _ = try? Files.unlink(rdir, r.gzName, label: r.gzName)
            return nil
        }
    }

    /// Turns a rotation into a sealed segment: the segment is admitted (journaled) before the
    /// rotation is forgotten, so that anyone counting what is left never finds neither.
    private func finishSeal(_ r: Rotation, name: String, st: stat, size: UInt64, crc: UInt32) {
        guard table.get(r.id) != nil else { return }
        let s = Segment(id: r.id, spool: r.spool, name: name, kind: .log, dev: UInt64(st.st_dev), ino: UInt64(st.st_ino),
                        size: size, crc: crc, mtimeNs: mtimeNanoseconds(st), sealedAt: Date().timeIntervalSince1970)
        do {
            try queue.admit([s])
        } catch {
            logger.error("cannot write the agent state; will seal again later", metadata: ["error": "\(error)"])
            health.error("cannot record a sealed segment: \(error)")
            return
        }
        table.remove(r.id)
    }

    private func rotationLost(_ r: Rotation, why: String) {
        logger.error("rotated log file lost before it was shipped", metadata: ["spool.name": "\(r.spool)", "segment.name": "\(r.rawName)", "reason": "\(why)"])
        try? journal.append([StateRecord(op: .done, id: r.id)], sync: false)
        table.remove(r.id)
    }

    /// A sealed log segment whose file changed before it was sent (or whose checksum the
    /// collector did not match): it becomes a rotation again (same sequence number), sealed
    /// anew by this sealer's thread. Called from a session's threads.
    func sealAgain(_ s: Segment) {
        guard let p = LogNames.parse(segmentName: s.name) else {
            if queue.forget(s.id, retry: { _ in true }) != nil {
                logger.warning("segment dropped before it was shipped", metadata: ["spool.name": "\(s.spool)", "segment.name": "\(s.name)", "reason": "the file changed after it was sealed"])
            }
            return
        }
        guard queue.segment(s.id) != nil else { return }
        var r = Rotation(id: ids.next(), spool: s.spool, stream: p.stream, seq: p.seq, dev: s.dev, ino: s.ino)
        r.renamed(size: 0, synced: false)
        do {
            try journal.append([StateRecord(op: .done, id: s.id), r.record], sync: true)
        } catch {
            logger.error("cannot write the agent state", metadata: ["error": "\(error)"])
            return
        }
        logger.warning("log segment changed after it was sealed; sealing it again", metadata: ["spool.name": "\(s.spool)", "segment.name": "\(s.name)"])
        table.add([r])
        _ = queue.remove(s.id)
        wake()
    }
}
