import Foundation
import Glibc
import Logging
import SpoolshipCore
import SpoolshipIO
import SpoolshipDaemon

/// The log rotator: owns each log stream's active file as last seen (`LogStream`), and
/// rotates what is due by size or age: records the rotation in the journal (synced) first,
/// renames the active file into the rotated directory as `NAME.<SEQ>`, syncs both directories,
/// then gets the producers to reopen. The log sealer takes it from there (`RotationTable`).
/// A crash between any two steps is finished by `LogRecovery` at the next start.
///
/// `@unchecked Sendable`: every stored `var` is read and written only while holding `cond`
/// (the rotator's thread, and the blob watcher's `forgetStreams`); the `let`s are Sendable.
final class LogRotator: @unchecked Sendable {
    private let spools: [SpoolConfig]
    private let dirs: SpoolDirectories
    private let table: RotationTable
    private let ids: SegmentIDs
    private let journal: AgentJournal
    private let leftBehind: LeftBehindFiles
    private let health: AgentHealth
    private let threads: AgentThreads
    private let logger: Logger
    /// Wakes the log sealer once a rotation is recorded (the rename's own event comes before
    /// that, and would find nothing to seal yet).
    private let sealerWake: @Sendable () -> Void

    private let cond = NSCondition()
    // Under `cond`:
    /// Each stream's active file as last seen, by `spool/stream`.
    private var streams: [String: LogStream] = [:]

    /// While some stream holds bytes not yet rotated, the rotator looks at the files that
    /// changed this often; otherwise it sleeps in inotify until one does.
    static let rotateTick = 0.01

    init(spools: [SpoolConfig], dirs: SpoolDirectories, table: RotationTable, ids: SegmentIDs, journal: AgentJournal,
         leftBehind: LeftBehindFiles, health: AgentHealth, threads: AgentThreads, logger: Logger,
         sealerWake: @escaping @Sendable () -> Void) {
        self.spools = spools.filter { $0.logs != nil && $0.logs?.follows == false }
        self.dirs = dirs
        self.table = table
        self.ids = ids
        self.journal = journal
        self.leftBehind = leftBehind
        self.health = health
        self.threads = threads
        self.logger = logger
        self.sealerWake = sealerWake
        threads.onStop { [cond] in cond.lock(); cond.broadcast(); cond.unlock() }
    }

    private func locked<R>(_ body: () throws -> R) rethrows -> R {
        cond.lock()
        defer { cond.unlock() }
        return try body()
    }

    /// A spool's directory came back: its streams are new files.
    func forgetStreams(_ spool: String) {
        locked { for k in streams.keys where k.hasPrefix("\(spool)/") { streams[k] = nil } }
    }

    // MARK: the rotator's thread

    /// Learns from inotify which active files changed (writes to one file are coalesced by
    /// the kernel while unread, so a busy producer costs one event per tick), stats those, and
    /// rotates what is due by size or age. Every second it also lists the directories, in case
    /// an event was missed.
    func run() {
        let ino: Inotify?
        do { ino = try Inotify() } catch {
            logger.warning("cannot watch the log spools; polling them instead", metadata: ["error": "\(error)"])
            ino = nil
        }
        if let ino { threads.onStop { ino.wake() } }
        var watches: [Int32: String] = [:]
        var watchedDir: [String: (UInt64, UInt64)] = [:]
        var lastList = 0.0
        while !threads.isStopped {
            threads.heartbeats.beat("rotator")
            let now = monotonicNow()
            var list = now - lastList >= 1
            if list {
                lastList = now
                if let ino = ino {
                    // (Re)watch each spool directory; one made again gets a new watch.
                    for s in spools {
                        guard let fd = dirs.spool(s.name), let st = try? Files.fstat(fd) else { continue }
                        let id = (UInt64(st.st_dev), UInt64(st.st_ino))
                        if let w = watchedDir[s.name], w == id { continue }
                        let mask = UInt32(IN_MODIFY | IN_CREATE | IN_MOVED_TO | IN_MOVED_FROM | IN_DELETE | IN_ONLYDIR)
                        if let wd = try? ino.watch(s.directory, mask: mask) {
                            watches[wd] = s.name
                            watchedDir[s.name] = id
                        }
                    }
                }
            }
            let pending = locked { streams.values.contains { $0.firstDataAt != nil } }
            var dirty: Set<String> = []
            if let ino = ino {
                do {
                    for e in try ino.read(timeout: pending ? 0 : 0.5) {
                        if e.overflow { list = true; continue }
                        if let spool = watches[e.watch], !e.name.isEmpty { dirty.insert("\(spool)/\(e.name)") }
                    }
                } catch {
                    logger.error("reading inotify events failed; listing the log spools instead", metadata: ["error": "\(error)"])
                    list = true
                }
            } else {
                list = true
            }
            rotatePass(all: false, list: list, dirty: list ? nil : dirty)
            if pending || ino == nil {
                cond.lock()
                if !threads.isStopped { _ = cond.wait(until: Date(timeIntervalSinceNow: ino == nil ? 0.1 : Self.rotateTick)) }
                cond.unlock()
            }
        }
    }

    /// Looks at the streams of every log spool and rotates those that are due (all those
    /// with bytes in them when `all`, as `--once` does at start). `list` re-reads the
    /// directories for new streams; `dirty`, when given, limits the look to the files that
    /// changed and to the streams whose age is up.
    func rotatePass(all: Bool, list: Bool = true, dirty: Set<String>? = nil) {
        for spool in spools {
            guard let settings = spool.logs, let dir = dirs.spool(spool.name) else { continue }
            if list || all { discoverStreams(spool, settings, dir) }
            let now = monotonicNow()
            var due: [(stream: String, st: stat)] = []
            let keys: [String] = locked {
                let prefix = "\(spool.name)/"
                guard let dirty = dirty else { return streams.keys.filter { $0.hasPrefix(prefix) } }
                var keys: [String] = []
                for k in dirty where k.hasPrefix(prefix) {
                    if streams[k] == nil, !leftBehind.isRefused(k), LogNames.matches(settings.glob, String(k.dropFirst(prefix.count))) {
                        keys.append(k)  // checked and added below, outside the lock
                    } else if streams[k] != nil {
                        keys.append(k)
                    }
                }
                for (k, s) in streams where k.hasPrefix(prefix) && !dirty.contains(k) && s.ageUp(now: now, rotateAge: settings.rotateAge) {
                    keys.append(k)
                }
                return keys
            }
            for key in keys {
                let name = String(key.dropFirst(spool.name.count + 1))
                if locked({ streams[key] == nil }) {
                    guard streamNameUsable(spool, name) else { continue }
                    locked { streams[key] = LogStream() }
                }
                let st: stat?
                do { st = try Files.statAt(dir, name, label: "\(spool.directory)/\(name)") } catch {
                    logger.error("cannot look at a log file", metadata: ["spool.name": "\(spool.name)", "stream": "\(name)", "error": "\(error)"])
                    continue
                }
                if let st = st, observe(spool, name, key, st, settings: settings, now: now, all: all) {
                    due.append((name, st))
                } else if st == nil {
                    streamVanished(spool, name, key)
                }
            }
            if !due.isEmpty { rotate(spool, settings, due) }
        }
    }

    /// Adds the spool's files that match its glob and are not streams yet.
    private func discoverStreams(_ spool: SpoolConfig, _ settings: LogSettings, _ dir: OwnedFD) {
        // A directory that cannot be listed is the watcher's to report.
        guard let names = try? Files.names(of: dir) else { return }
        for n in names where LogNames.matches(settings.glob, n) {
            let key = "\(spool.name)/\(n)"
            if locked({ streams[key] == nil }) && streamNameUsable(spool, n) {
                locked { streams[key] = LogStream() }
            }
        }
    }

    private func streamNameUsable(_ spool: SpoolConfig, _ name: String) -> Bool {
        Self.streamNameUsable(spool, name, leftBehind: leftBehind, logger: logger)
    }

    /// Whether a stream's segment names can be shipped (the longest, `NAME.<SEQ>.gz`, must be
    /// a valid name); a stream that cannot is left alone, and said so once. The rotator's and
    /// the follower's.
    static func streamNameUsable(_ spool: SpoolConfig, _ name: String, leftBehind: LeftBehindFiles, logger: Logger) -> Bool {
        do {
            try Names.validateSegmentName(LogNames.segmentName(stream: name, seq: 1, compressed: true), what: "segment name of this log file")
            return true
        } catch {
            if leftBehind.refuse("\(spool.name)/\(name)") {
                logger.error("log file name cannot be shipped; leaving the file alone", metadata: ["spool.name": "\(spool.name)", "stream": "\(name)", "error": "\(error)"])
            }
            return false
        }
    }

    /// Updates what is known of a stream from a fresh stat of its active file, reports what
    /// someone else did to it, and says whether it is due for rotation.
    private func observe(_ spool: SpoolConfig, _ name: String, _ key: String, _ st: stat, settings: LogSettings, now: Double, all: Bool) -> Bool {
        cond.lock()
        defer { cond.unlock() }
        guard var s = streams[key] else { return false }
        defer { streams[key] = s }
        guard (st.st_mode & S_IFMT) == S_IFREG else {
            if !s.warnedNotRegular {
                logger.warning("a name matching the log glob is not a regular file; ignoring it", metadata: ["spool.name": "\(spool.name)", "stream": "\(name)"])
                s.warnedNotRegular = true
            }
            return false
        }
        let seen = s.observe(dev: UInt64(st.st_dev), ino: UInt64(st.st_ino), size: UInt64(st.st_size), now: now,
                             rotateSize: settings.rotateSize, rotateAge: settings.rotateAge, all: all)
        switch seen.surprise {
        case .replaced(let lost):
            logger.error("log file was replaced behind the agent's back (not by a rotation); the old file's bytes since the last rotation are not shipped", metadata: [
                "spool.name": "\(spool.name)", "stream": "\(name)", "bytes.lost": "\(lost)"])
            logger.debug("watching log file", metadata: ["spool.name": "\(spool.name)", "stream": "\(name)", "bytes": "\(st.st_size)"])
        case .adopted:
            logger.debug("watching log file", metadata: ["spool.name": "\(spool.name)", "stream": "\(name)", "bytes": "\(st.st_size)"])
        case .truncated(let before, let now):
            logger.error("log file was truncated behind the agent's back (copytruncate?); the bytes cut off were not shipped by spoolship", metadata: [
                "spool.name": "\(spool.name)", "stream": "\(name)", "size.before": "\(before)", "size.now": "\(now)"])
        case nil:
            break
        }
        return seen.due
    }

    private func streamVanished(_ spool: SpoolConfig, _ name: String, _ key: String) {
        locked {
            if let s = streams[key], s.lostIfVanished > 0 {
                logger.error("log file was deleted or moved away before it was rotated; its bytes since the last rotation are not shipped", metadata: [
                    "spool.name": "\(spool.name)", "stream": "\(name)", "bytes.lost": "\(s.lostIfVanished)"])
            }
            streams[key] = nil
        }
    }

    /// Rotates streams: records each step in the journal (synced) first, renames the active
    /// files into the rotated directory, syncs both directories, then gets the producers to
    /// reopen. A crash between any two steps is finished by `LogRecovery`.
    private func rotate(_ spool: SpoolConfig, _ settings: LogSettings, _ due: [(stream: String, st: stat)]) {
        guard let both = dirs.logDirectories(spool.name) else { return }
        let dir = both.spool
        var rdir = both.rotated
        if let st = try? Files.fstat(rdir), st.st_nlink == 0 {
            // Someone removed the directory of rotated files (and what was in it).
            do {
                rdir = try Files.ensureDirectory(dir, LogNames.rotatedDirName, label: "\(spool.directory)/\(LogNames.rotatedDirName)", mode: 0o700)
                logger.error("the directory of rotated files was removed; made it again (rotated files in it were lost)", metadata: ["spool.name": "\(spool.name)"])
                dirs.replaceRotated(spool.name, rdir)
            } catch {
                logger.error("cannot make the directory of rotated files again", metadata: ["spool.name": "\(spool.name)", "error": "\(error)"])
                backOff(spool, due.map(\.stream))
                return
            }
        }
        let planned = table.plan(spool: spool.name, streams: due.map { ($0.stream, UInt64($0.st.st_dev), UInt64($0.st.st_ino)) }, ids: ids)
        do {
            try journal.append(planned.map(\.record), sync: true)
        } catch {
            logger.error("cannot record a rotation in the agent state; not rotating for now", metadata: ["spool.name": "\(spool.name)", "error": "\(error)"])
            health.error("cannot record a rotation: \(error)")
            backOff(spool, due.map(\.stream))
            return
        }
        var done: [Rotation] = []
        var abandoned: [Rotation] = []
        for var r in planned {
            let label = "\(spool.directory)/\(r.stream)"
            do {
                if try Files.renameNoReplace(dir, r.stream, rdir, r.rawName, label: label) {
                    var size: UInt64 = 0
                    if let st = try Files.statAt(rdir, r.rawName, label: label) {
                        r.dev = UInt64(st.st_dev); r.ino = UInt64(st.st_ino); size = UInt64(st.st_size)
                    }
                    r.renamed(size: size, synced: false)
                    done.append(r)
                } else {
                    logger.error("a file already has the rotated name; skipping this sequence number", metadata: ["spool.name": "\(spool.name)", "segment.name": "\(r.rawName)"])
                    abandoned.append(r)
                }
            } catch let e as SyscallError where e.errno == ENOENT {
                abandoned.append(r)  // deleted meanwhile; the next pass reports it
            } catch {
                logger.error("cannot rotate a log file", metadata: ["spool.name": "\(spool.name)", "stream": "\(r.stream)", "error": "\(error)"])
                abandoned.append(r)
            }
        }
        if !done.isEmpty {
            // The new names must survive a crash before anything is sealed from them (R1).
            do {
                try Files.fsync(rdir)
                try Files.fsync(dir)
                for i in done.indices { done[i].directoriesSynced() }
            } catch {
                logger.error("cannot sync a log spool directory after rotating; sealing waits for a sync that succeeds", metadata: ["spool.name": "\(spool.name)", "error": "\(error)"])
            }
        }
        if !abandoned.isEmpty { backOff(spool, abandoned.map(\.stream)) }
        try? journal.append(abandoned.map { StateRecord(op: .done, id: $0.id) }, sync: false)
        table.add(done)
        locked {
            for r in done {
                streams[r.streamKey] = LogStream(expectNew: true)
                logger.debug("rotated", metadata: ["spool.name": "\(r.spool)", "stream": "\(r.stream)", "segment.name": "\(r.rawName)", "bytes": "\(r.sizeAtRotation)"])
            }
        }
        // The sealer saw the rename before the rotation was recorded: it looks again now,
        // instead of at its next timeout (half a second later).
        if !done.isEmpty {
            sealerWake()
            Self.reopenProducers(spool, settings, logger: logger)
        }
    }

    /// Streams whose rotation failed are not tried again for a few seconds.
    private func backOff(_ spool: SpoolConfig, _ names: [String]) {
        let until = monotonicNow() + 5
        locked {
            for n in names { streams["\(spool.name)/\(n)"]?.retryAfter = until }
        }
    }

    /// Gets a log spool's producers to reopen its files after a rotation (as the spool's
    /// `reopen` setting says).
    static func reopenProducers(_ spool: SpoolConfig, _ settings: LogSettings, logger: Logger) {
        switch settings.reopen {
        case .path, .never:
            return
        case .signal(let pidFile, let sig):
            do {
                let pid = try Processes.signal(pidFile: pidFile, signal: sig)
                logger.debug("signalled producer to reopen", metadata: ["spool.name": "\(spool.name)", "pid": "\(pid)", "signal": "\(sig)"])
            } catch {
                logger.error("cannot signal the producer to reopen its log; the rotated file is sealed once it closes it", metadata: [
                    "spool.name": "\(spool.name)", "pid.file": "\(pidFile)", "error": "\(error)"])
            }
        case .command(let cmd):
            do {
                let outcome = try Processes.runShell(cmd, timeout: settings.reopenTimeout)
                if outcome != .exited(0) {
                    logger.error("reopen command failed", metadata: ["spool.name": "\(spool.name)", "command": "\(cmd)", "outcome": "\(outcome)"])
                }
            } catch {
                logger.error("cannot run the reopen command", metadata: ["spool.name": "\(spool.name)", "command": "\(cmd)", "error": "\(error)"])
            }
        }
    }
}
