import Foundation
import Glibc
import Logging
import SpoolshipCore
import SpoolshipIO
import SpoolshipDaemon

/// The reaper keeps rule R4 whole: a spool file is deleted (or archived) only after the
/// collector acknowledged its segment as committed, and the acknowledgement is journaled and
/// synced before the file goes. For each batch: journal the acks (synced), move each file
/// aside (or straight into the archive dir) and check it, unlink the aside name (or leave it
/// archived), sync the directories, journal it done, and hand it back to the queue. A crash
/// anywhere is finished at the next start (`recover`): a journaled ack whose file is still
/// there, under its name, aside or unchecked in the archive, is removed again.
///
/// `@unchecked Sendable`: every stored `var` is read and written only while holding `cond`;
/// the `let`s are Sendable or thread-safe.
final class Reaper: @unchecked Sendable {
    private let cond = NSCondition()
    private let journal: AgentJournal
    private let queue: SegmentQueue
    private let dirs: SpoolDirectories
    /// Each spool's archive dir (`--archive-dir`), or none: acknowledged files are deleted.
    private let archiveDirs: [String: OwnedFD]
    private let threads: AgentThreads
    private let logger: Logger
    private let stats: AgentStats
    /// Where the reaper sends names to seal again (files that took a shipped one's name, a
    /// shipped file put back), and the names it puts back itself.
    private let sealer: BlobSealer
    /// Rewrites the journal when it has grown (the agent gathers the live state).
    private let compact: @Sendable () -> Void
    // Under `cond`:
    /// Acknowledged segments waiting for the reaper.
    private var pending: [Segment] = []
    /// Acknowledged segments whose ack record is already synced (a retry must not append it
    /// again).
    private var journaled: Set<UInt64> = []
    /// Segments whose file may have been moved by a removal that did not finish, and where to
    /// look for it (`moveAside`). No other segment's file can be anywhere but under its name.
    private var whereabouts: [UInt64: Whereabouts] = [:]
    private var idle = false

    /// Where the file of a segment whose removal did not finish may be.
    enum Whereabouts {
        /// Found acknowledged at start: under its aside name, or (`archive`: with an archive
        /// dir, for the newest segment of its file) in the archive, by its device and inode.
        case unknown(archive: Bool)
        /// Moved by this process: under its aside name, or in the archive under this name.
        case aside
        case archived(String)
    }

    /// How long files moved aside wait before the reaper looks at them again and removes them
    /// (see `moveAside`), and how many chunks of moved files wait out their grace at once
    /// besides the one being moved.
    static let removalGrace = 0.1
    static let chunksWaiting = 3
    /// How many files are moved aside as one chunk. Each file held holds a descriptor: the
    /// chunks held at once stay within a quarter of the descriptor limit.
    let removalChunk: Int

    init(journal: AgentJournal, queue: SegmentQueue, dirs: SpoolDirectories, archiveDirs: [String: OwnedFD], threads: AgentThreads,
         sealer: BlobSealer, logger: Logger, stats: AgentStats, compact: @escaping @Sendable () -> Void) {
        self.journal = journal
        self.queue = queue
        self.dirs = dirs
        self.archiveDirs = archiveDirs
        self.threads = threads
        self.sealer = sealer
        self.logger = logger
        self.stats = stats
        self.compact = compact
        var lim = rlimit()
        let soft = getrlimit(Int32(RLIMIT_NOFILE.rawValue), &lim) == 0 ? Int(clamping: lim.rlim_cur) : 1024
        removalChunk = max(16, min(1024, soft / 4 / (Self.chunksWaiting + 1)))
        threads.onStop { [cond] in cond.lock(); cond.broadcast(); cond.unlock() }
    }

    /// At start, before any thread: finishes removing what was acknowledged before the last
    /// stop. A file that cannot be removed now is retried by the reaper's thread, never a
    /// failed start.
    func recover(_ acked: [Segment]) {
        guard !acked.isEmpty else { return }
        // Several segments of one file (a file appended to in place, sealed again): only the
        // newest can have been moved into the archive, the older ones found it changed.
        var newest: [String: UInt64] = [:]
        for s in acked { newest["\(s.dev):\(s.ino)", default: s.id] = max(newest["\(s.dev):\(s.ino)", default: s.id], s.id) }
        cond.lock()
        for s in acked { whereabouts[s.id] = .unknown(archive: newest["\(s.dev):\(s.ino)"] == s.id) }
        cond.unlock()
        let failed = finish(acked)
        cond.lock()
        journaled.formUnion(failed.map(\.id))
        pending += failed
        cond.unlock()
    }

    /// Hands acknowledged segments to the reaper.
    func reap(_ acked: [Segment]) {
        guard !acked.isEmpty else { return }
        cond.lock()
        pending += acked
        cond.broadcast()
        cond.unlock()
    }

    /// Waits up to `timeout` seconds for the reaper to finish what it holds after a stop.
    func waitIdle(timeout: Double) {
        cond.lock()
        let until = Date(timeIntervalSinceNow: timeout)
        while !idle { if !cond.wait(until: until) { break } }
        cond.unlock()
    }

    /// The reaper's thread. A file that cannot be removed is logged and retried a little
    /// later, alone: it never holds up the others.
    func run() {
        while true {
            cond.lock()
            while pending.isEmpty && !threads.isStopped {
                threads.heartbeats.beat("reaper")
                _ = cond.wait(until: Date(timeIntervalSinceNow: 1))
            }
            threads.heartbeats.beat("reaper")
            if pending.isEmpty { idle = true; cond.broadcast(); cond.unlock(); return }
            let batch = pending
            pending.removeAll()
            let unjournaled = batch.filter { !journaled.contains($0.id) }
            cond.unlock()
            do {
                try journal.append(unjournaled.map { var r = StateRecord(op: .ack, id: $0.id); r.stored = $0.stored; return r }, sync: true)
            } catch {
                // Still acknowledged in memory, so never offered again; retry shortly.
                logger.error("cannot record acknowledgements; retrying", metadata: ["error": "\(error)"])
                cond.lock()
                pending = batch + pending
                _ = cond.wait(until: Date(timeIntervalSinceNow: 1))
                cond.unlock()
                continue
            }
            cond.lock()
            journaled.formUnion(unjournaled.map(\.id))
            cond.unlock()
            let failed = finish(batch)
            if !failed.isEmpty {
                cond.lock()
                if threads.isStopped {
                    // Stopping: what cannot be removed now is removed at the next start.
                    idle = true
                    cond.broadcast()
                    cond.unlock()
                    return
                }
                pending += failed
                _ = cond.wait(until: Date(timeIntervalSinceNow: 5))
                cond.unlock()
            }
        }
    }

    /// Deletes (or archives) the local copies of acknowledged segments, syncs their
    /// directories, and records them done. Returns the segments that failed, to retry.
    private func finish(_ batch: [Segment]) -> [Segment] {
        var touched: [String: OwnedFD] = [:]
        var removed: [Segment] = []
        var failed: [Segment] = []
        var rescan: [(String, String)] = []
        func cannotRemove(_ s: Segment, _ error: Error) {
            logger.error("cannot remove an acknowledged file; will retry", metadata: ["spool.name": "\(s.spool)", "segment.name": "\(s.name)", "error": "\(error)"])
            stats.error(.remove)
            failed.append(s)
        }
        cond.lock()
        let known = whereabouts
        cond.unlock()
        // Moved in this batch and not finished: where they are now.
        var unfinished: [UInt64: Whereabouts] = [:]
        // Chunks moved aside and waiting out their grace. The next chunk is moved aside while
        // the ones before it wait, so the reaper sleeps only when nothing else is left to do.
        var waiting: [(due: Double, held: [Aside])] = []
        func removeWhenDue(_ chunk: (due: Double, held: [Aside])) {
            let wait = chunk.due - monotonicNow()
            if wait > 0 { usleep(UInt32(wait * 1_000_000)) }
            for a in chunk.held {
                do {
                    try removeAside(a, rescan: &rescan)
                    removed.append(a.segment)
                } catch {
                    cannotRemove(a.segment, error)
                    unfinished[a.segment.id] = a.archived ? .archived(a.movedName) : .aside
                }
                Files.releaseLease(a.fd)
            }
        }
        for start in stride(from: 0, to: batch.count, by: removalChunk) {
            var held: [Aside] = []
            for s in batch[start..<min(start + removalChunk, batch.count)] {
                // A followed file's range: the file is the producer's; nothing to remove.
                if s.isFollowed { removed.append(s); continue }
                do {
                    switch try moveAside(s, whereabouts: known[s.id], touched: &touched, rescan: &rescan) {
                    case .done: removed.append(s)
                    case .retry:
                        failed.append(s)
                        unfinished[s.id] = .aside
                    case .moved(let a): held.append(a)
                    case .unfinished(let a, let error):
                        cannotRemove(s, error)
                        unfinished[s.id] = .archived(a.movedName)
                    }
                } catch {
                    cannotRemove(s, error)
                }
            }
            // An open(2) that found one of these files by its name just before the move takes
            // its write access, which breaks the lease, within microseconds; the grace covers a
            // producer that the scheduler holds up in between, unless for longer than it.
            if !held.isEmpty { waiting.append((monotonicNow() + Self.removalGrace, held)) }
            while let first = waiting.first, first.due <= monotonicNow() || waiting.count > Self.chunksWaiting {
                removeWhenDue(waiting.removeFirst())
            }
        }
        while !waiting.isEmpty { removeWhenDue(waiting.removeFirst()) }
        var synced = removed
        for (key, d) in touched {
            do {
                try Files.fsync(d)
            } catch {
                // R4: not done until its directory is synced. Retry those of this directory.
                logger.error("cannot sync a spool directory after removing files; will retry", metadata: ["directory": "\(key)", "error": "\(error)"])
                let spool = key.hasPrefix("archive/") ? String(key.dropFirst("archive/".count))
                    : key.hasPrefix("rotated/") ? String(key.dropFirst("rotated/".count)) : key
                failed += synced.filter { $0.spool == spool }
                synced.removeAll { $0.spool == spool }
            }
        }
        do {
            try journal.append(synced.map { StateRecord(op: .done, id: $0.id) }, sync: false)
        } catch {
            logger.error("cannot record removed files as done; the next start checks them again", metadata: ["error": "\(error)"])
        }
        cond.lock()
        for s in synced {
            journaled.remove(s.id)
            whereabouts[s.id] = nil
        }
        // A failure after a move: the retry looks where the file went first.
        for (id, w) in unfinished { whereabouts[id] = w }
        cond.unlock()
        rescan += queue.finished(synced)
        compact()
        // Files that took the name meanwhile are new segments: the blob watcher seals them.
        for (spool, name) in rescan { sealer.requestSeal(spool: spool, name: name) }
        return failed
    }

    /// An acknowledged file moved aside (or straight into the archive dir), held open (with a
    /// read lease where the kernel gives one) from before the move until it is checked.
    private struct Aside {
        var segment: Segment
        /// The directory that held its name.
        var dir: OwnedFD
        /// Where it was moved: its aside name in `dir`, or its name in the archive dir.
        var movedTo: OwnedFD
        var movedName: String
        var archived: Bool
        var fd: OwnedFD
        var lease: Files.ReadLease
    }

    private enum MoveAside {
        case done, retry
        case moved(Aside)
        /// Moved, and failed after the move.
        case unfinished(Aside, Error)
    }

    /// The private name a file is moved aside to (ignored by scans: it starts with a dot).
    static func asideName(_ id: UInt64) -> String { ".spoolship-reap-\(id)" }

    /// Removes acknowledged files, never another file that took the name, and never a file
    /// that changed since it was sealed or that a process holds open for writing. In two steps,
    /// a batch at a time (`finish`):
    ///
    /// 1. `moveAside`: if the name holds the sealed file (device, inode, size, mtime), open it,
    ///    take a read lease (the kernel gives one only while no one has the file open for
    ///    writing, and any later open for writing breaks it), and rename it without replacing:
    ///    with an archive dir, straight into it (as `name`, or `name~N` if that is taken);
    ///    otherwise aside, to a private dotfile name (`.spoolship-reap-<id>`, ignored by
    ///    scans). A file held open for writing, or grown or rewritten since its seal, is left
    ///    where it is: it is sealed again and ships whole as the next version once closed.
    /// 2. `removeAside`, once `removalGrace` has passed: from the move on no one can open it by
    ///    its name, and an open(2) that found it by its name just before the move has got its
    ///    write access by now (unless the scheduler held that producer up for longer). If the
    ///    name it was moved to holds the sealed file, unchanged, and the lease is whole (where
    ///    no lease could be had: no writer in /proc), it is done: unlink the aside name, or
    ///    leave the file in the archive. Otherwise put it back, under its name or as `name~N`
    ///    if the name is taken again, and seal it again: a new file that replaced the name just
    ///    before the move, or the shipped file being written, which ships again.
    ///
    /// Without the lease and the wait, a producer that appends in place and had just opened
    /// the file would write into an unlinked (or archived) file, lost. A crash between the
    /// steps leaves the aside name, or an archived file not yet checked, which the next start
    /// finishes; a failure after the move leaves the same, which the retry finishes
    /// (`whereabouts`).
    private func moveAside(_ s: Segment, whereabouts: Whereabouts?, touched: inout [String: OwnedFD], rescan: inout [(String, String)]) throws -> MoveAside {
        guard let dir = dirs.holding(s) else { return .done }
        // The directory is synced whatever happens below: a retry after a failed directory
        // sync finds the file already gone, and must still sync before recording it done.
        touched[s.kind == .log ? "rotated/\(s.spool)" : s.spool] = dir
        let archive = archiveDirs[s.spool]
        if let adir = archive { touched["archive/\(s.spool)"] = adir }
        let label = "\(s.spool)/\(s.name)"
        let aside = Self.asideName(s.id)
        let asideLabel = "\(s.spool)/\(aside)"
        // Moved before a crash or a failure: held now, and looked at with the rest.
        var archivedAs: String?
        switch whereabouts {
        case nil: break
        case .unknown(let search):
            if search, let adir = archive { archivedAs = try archived(s, in: adir) }
        case .archived(let name): archivedAs = name
        case .aside: break
        }
        if whereabouts != nil, try Files.statAt(dir, aside, label: asideLabel) != nil {
            guard let fd = try Files.openIfPresent(dir, aside, label: asideLabel) else { return .done }
            return .moved(Aside(segment: s, dir: dir, movedTo: dir, movedName: aside, archived: false, fd: fd, lease: Files.takeReadLease(fd)))
        }
        if let adir = archive, let name = archivedAs, let fd = try Files.openIfPresent(adir, name, label: "archive \(label)") {
            // What this process moved there (ours, or a new file that took the name: the check
            // tells), or the sealed file found there by its device and inode.
            return .moved(Aside(segment: s, dir: dir, movedTo: adir, movedName: name, archived: true, fd: fd, lease: Files.takeReadLease(fd)))
        }
        guard let fd = try Files.openIfPresent(dir, s.name, label: label) else { return .done }  // gone: nothing of ours is left
        let st = try Files.fstat(fd)
        guard s.isSealed(st) else {
            if s.isSameFile(st) {
                // Appended to or rewritten after the seal: the collector has the version that
                // was sealed; this one ships as the next.
                changedAfterSeal(s, name: s.name)
                if s.kind == .blob { rescan.append((s.spool, s.name)) }
            }
            return .done  // else another file took the name: it is not ours to remove
        }
        let lease = Files.takeReadLease(fd)
        if lease == .writers {
            changedAfterSeal(s, name: s.name)
            if s.kind == .blob { rescan.append((s.spool, s.name)) }
            return .done
        }
        if let adir = archive {
            // One rename instead of two: the archive is where the file ends up, and it is
            // checked there. (The lease was taken while the name still held the file.)
            var attempt = 0
            while try !Files.renameNoReplace(dir, s.name, adir, Names.alternateName(s.name, attempt: attempt), label: "archive \(label)") {
                attempt += 1
            }
            let a = Aside(segment: s, dir: dir, movedTo: adir, movedName: Names.alternateName(s.name, attempt: attempt), archived: true,
                          fd: fd, lease: lease)
            // What moved, at once (the name was just made, so this look-up is cached): a new
            // file that a producer put under the name since the open above goes back now, not
            // after the grace, so that a crash cannot leave it unshipped in the archive.
            do {
                if let moved = try Files.statAt(adir, a.movedName, label: "archive \(label)"),
                   !(UInt64(moved.st_dev) == UInt64(st.st_dev) && UInt64(moved.st_ino) == UInt64(st.st_ino)) {
                    try removeAside(a, rescan: &rescan)
                    Files.releaseLease(fd)
                    return .done
                }
            } catch {
                Files.releaseLease(fd)
                return .unfinished(a, error)
            }
            return .moved(a)
        }
        guard try Files.renameNoReplace(dir, s.name, dir, aside, label: asideLabel) else { return .retry }
        return .moved(Aside(segment: s, dir: dir, movedTo: dir, movedName: aside, archived: false, fd: fd, lease: lease))
    }

    /// The name under which a segment's file lies in the archive dir (its device and inode),
    /// among `name`, `name~1`, ... up to the first that does not exist (or is too long); nil
    /// if none.
    private func archived(_ s: Segment, in adir: OwnedFD) throws -> String? {
        var attempt = 0
        while true {
            let name = Names.alternateName(s.name, attempt: attempt)
            let st: stat?
            do {
                st = try Files.statAt(adir, name, label: "archive \(s.spool)/\(name)")
            } catch let e as SyscallError where e.errno == ENAMETOOLONG {
                return nil
            }
            guard let st else { return nil }
            if s.isSameFile(st) { return name }
            attempt += 1
        }
    }

    private func removeAside(_ a: Aside, rescan: inout [(String, String)]) throws {
        let s = a.segment
        let label = "\(s.spool)/\(s.name)"
        let movedLabel = a.archived ? "archive \(s.spool)/\(a.movedName)" : "\(s.spool)/\(a.movedName)"
        guard let moved = try Files.statAt(a.movedTo, a.movedName, label: movedLabel) else { return }
        let held = try Files.fstat(a.fd)
        let written: Bool
        switch a.lease {
        case .held: written = !Files.readLeaseIntact(a.fd)
        case .writers: written = true
        case .unavailable: written = !Processes.writers(dev: UInt64(held.st_dev), ino: UInt64(held.st_ino)).isEmpty
        }
        let ours = s.isSameFile(moved) && UInt64(held.st_dev) == UInt64(moved.st_dev) && UInt64(held.st_ino) == UInt64(moved.st_ino)
        if ours && s.isSealed(moved) && !written {
            if a.archived { return }  // in the archive already, where it stays
            if let adir = archiveDirs[s.spool] {
                // Moved aside by an agent that did not yet rename straight into the archive.
                var attempt = 0
                while try !Files.renameNoReplace(a.movedTo, a.movedName, adir, Names.alternateName(s.name, attempt: attempt), label: "archive \(label)") {
                    attempt += 1
                }
            } else {
                try Files.unlink(a.movedTo, a.movedName, label: movedLabel)
            }
            return
        }
        var attempt = 0
        while try !Files.renameNoReplace(a.movedTo, a.movedName, a.dir, Names.alternateName(s.name, attempt: attempt), label: label) {
            attempt += 1
        }
        let putBack = Names.alternateName(s.name, attempt: attempt)
        sealer.putBack(spool: s.spool, name: putBack)
        if s.isSameFile(moved) {
            changedAfterSeal(s, name: putBack)
        } else {
            logger.notice("a new file took the name of a shipped one; it stays and is shipped too", metadata: [
                "spool.name": "\(s.spool)", "segment.name": "\(putBack)"])
        }
        if s.kind == .blob { rescan.append((s.spool, putBack)) }
    }

    /// A shipped file that a producer appended to, rewrote or still holds open for writing: it
    /// stays, and is sealed and shipped again whole once closed (the collector keeps both
    /// versions, the later as `name~N`).
    private func changedAfterSeal(_ s: Segment, name: String) {
        logger.notice("a shipped file changed after it was sealed or is still open for writing; it stays and ships again whole once closed", metadata: [
            "spool.name": "\(s.spool)", "segment.name": "\(name)", "bytes.shipped": "\(s.size)"])
    }
}
