import Foundation
import Glibc
import Logging
import SpoolshipCore
import SpoolshipIO
import SpoolshipDaemon

/// A log stream's active file, as the rotator last saw it.
struct StreamState {
    var dev: UInt64 = 0
    var ino: UInt64 = 0
    var size: UInt64 = 0
    /// When the rotator first saw bytes in this file since it was last rotated (monotonic).
    var firstDataAt: Double?
    /// The agent renamed the last file away: a new inode under the name is expected.
    var expectNew = true
    var warnedNotRegular = false
    /// After a failed rotation: not tried again before this time (monotonic).
    var retryAfter: Double?
}

/// Log spools: rotation (rename aside, journaled first), producer reopen, sealing once no
/// writer holds a rotated file (with optional gzip), and the recovery of each step after a
/// crash. The segments that come out of here ship exactly like blobs.
extension Agent {
    /// While some stream holds bytes not yet rotated, the rotator looks at the files that
    /// changed this often; otherwise it sleeps in inotify until one does.
    static let rotateTick = 0.01
    /// A rotated file held open for writing this long gets a warning naming the holders.
    static let writerWarnAfter = 30.0

    var logSpools: [SpoolConfig] { config.spools.filter { $0.logs != nil } }

    // MARK: rotation

    /// The rotator: learns from inotify which active files changed (writes to one file are
    /// coalesced by the kernel while unread, so a busy producer costs one event per tick),
    /// stats those, and rotates what is due by size or age. Every second it also lists the
    /// directories, in case an event was missed.
    func rotateLoop() {
        let ino: Inotify?
        do { ino = try Inotify() } catch {
            logger.warning("cannot watch the log spools; polling them instead", metadata: ["error": "\(error)"])
            ino = nil
        }
        var watches: [Int32: String] = [:]
        var watchedDir: [String: (UInt64, UInt64)] = [:]
        var lastList = 0.0
        while !isStopped {
            heartbeats.beat("rotator")
            let now = monotonicNow()
            var list = now - lastList >= 1
            if list {
                lastList = now
                if let ino = ino {
                    // (Re)watch each spool directory; one made again gets a new watch.
                    for s in logSpools {
                        guard let fd = state.withLock({ spoolDirs[s.name] }), let st = try? Files.fstat(fd) else { continue }
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
            let pending = state.withLock { streams.values.contains { $0.firstDataAt != nil } }
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
                state.lock()
                if !stopped { _ = state.wait(until: Date(timeIntervalSinceNow: ino == nil ? 0.1 : Self.rotateTick)) }
                state.unlock()
            }
        }
    }

    /// Looks at the streams of every log spool and rotates those that are due (all those
    /// with bytes in them when `all`). `list` re-reads the directories for new streams;
    /// `dirty`, when given, limits the look to the files that changed and to the streams
    /// whose age is up.
    func rotatePass(all: Bool, list: Bool = true, dirty: Set<String>? = nil) {
        for spool in logSpools {
            guard let settings = spool.logs, let dir = state.withLock({ spoolDirs[spool.name] }) else { continue }
            if list || all { discoverStreams(spool, settings) }
            let now = monotonicNow()
            var due: [(stream: String, st: stat)] = []
            let keys: [String] = state.withLock {
                let prefix = "\(spool.name)/"
                guard let dirty = dirty else { return streams.keys.filter { $0.hasPrefix(prefix) } }
                var keys: [String] = []
                for k in dirty where k.hasPrefix(prefix) {
                    if streams[k] == nil, !refused.contains(k), LogNames.matches(settings.glob, String(k.dropFirst(prefix.count))) {
                        keys.append(k)  // checked and added below, outside the lock
                    } else if streams[k] != nil {
                        keys.append(k)
                    }
                }
                for (k, s) in streams where k.hasPrefix(prefix) && !dirty.contains(k) {
                    if let first = s.firstDataAt, now - first >= settings.rotateAge { keys.append(k) }
                }
                return keys
            }
            for key in keys {
                let name = String(key.dropFirst(spool.name.count + 1))
                if state.withLock({ streams[key] == nil }) {
                    guard streamNameUsable(spool, name) else { continue }
                    state.withLock { streams[key] = StreamState() }
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
    private func discoverStreams(_ spool: SpoolConfig, _ settings: LogSettings) {
        let names: [String]
        do {
            names = try FileManager.default.contentsOfDirectory(atPath: spool.directory)
        } catch {
            return  // the watcher reports a missing spool directory
        }
        for n in names where LogNames.matches(settings.glob, n) {
            let key = "\(spool.name)/\(n)"
            if state.withLock({ streams[key] == nil }) && streamNameUsable(spool, n) {
                state.withLock { streams[key] = StreamState() }
            }
        }
    }

    /// Whether a stream's segment names can be shipped (the longest, `NAME.<SEQ>.gz`, must be
    /// a valid name); a stream that cannot is left alone, and said so once.
    func streamNameUsable(_ spool: SpoolConfig, _ name: String) -> Bool {
        do {
            try Names.validateSegmentName(LogNames.segmentName(stream: name, seq: 1, compressed: true), what: "segment name of this log file")
            return true
        } catch {
            let key = "\(spool.name)/\(name)"
            if state.withLock({ refused.insert(key).inserted }) {
                logger.error("log file name cannot be shipped; leaving the file alone", metadata: ["spool.name": "\(spool.name)", "stream": "\(name)", "error": "\(error)"])
            }
            return false
        }
    }

    /// Updates what is known of a stream from a fresh stat of its active file, reports what
    /// someone else did to it, and says whether it is due for rotation.
    private func observe(_ spool: SpoolConfig, _ name: String, _ key: String, _ st: stat, settings: LogSettings, now: Double, all: Bool) -> Bool {
        state.lock()
        defer { state.unlock() }
        guard var s = streams[key] else { return false }
        defer { streams[key] = s }
        guard (st.st_mode & S_IFMT) == S_IFREG else {
            if !s.warnedNotRegular {
                logger.warning("a name matching the log glob is not a regular file; ignoring it", metadata: ["spool.name": "\(spool.name)", "stream": "\(name)"])
                s.warnedNotRegular = true
            }
            return false
        }
        let dev = UInt64(st.st_dev), ino = UInt64(st.st_ino), size = UInt64(st.st_size)
        if dev != s.dev || ino != s.ino {
            if !s.expectNew && s.size > 0 {
                logger.error("log file was replaced behind the agent's back (not by a rotation); the old file's bytes since the last rotation are not shipped", metadata: [
                    "spool.name": "\(spool.name)", "stream": "\(name)", "bytes.lost": "\(s.size)"])
            }
            s = StreamState(dev: dev, ino: ino, size: 0, firstDataAt: nil, expectNew: false)
            logger.debug("watching log file", metadata: ["spool.name": "\(spool.name)", "stream": "\(name)", "bytes": "\(size)"])
        } else if size < s.size {
            logger.error("log file was truncated behind the agent's back (copytruncate?); the bytes cut off were not shipped by spoolship", metadata: [
                "spool.name": "\(spool.name)", "stream": "\(name)", "size.before": "\(s.size)", "size.now": "\(size)"])
            s.firstDataAt = size > 0 ? now : nil
        }
        s.size = size
        if size > 0 && s.firstDataAt == nil { s.firstDataAt = now }
        guard size > 0 else { return false }
        if let r = s.retryAfter, now < r { return false }
        return all || size >= settings.rotateSize || now - (s.firstDataAt ?? now) >= settings.rotateAge
    }

    private func streamVanished(_ spool: SpoolConfig, _ name: String, _ key: String) {
        state.withLock {
            if let s = streams[key], !s.expectNew, s.size > 0 {
                logger.error("log file was deleted or moved away before it was rotated; its bytes since the last rotation are not shipped", metadata: [
                    "spool.name": "\(spool.name)", "stream": "\(name)", "bytes.lost": "\(s.size)"])
            }
            streams[key] = nil
        }
    }

    /// Rotates streams: records each step in the journal (synced) first, renames the active
    /// files into the rotated directory, syncs both directories, then gets the producers to
    /// reopen. A crash between any two steps is finished by `recoverRotations`.
    private func rotate(_ spool: SpoolConfig, _ settings: LogSettings, _ due: [(stream: String, st: stat)]) {
        guard let dirs = state.withLock({ () -> (OwnedFD, OwnedFD)? in
            guard let d = spoolDirs[spool.name], let r = rotatedDirs[spool.name] else { return nil }
            return (d, r)
        }) else { return }
        let dir = dirs.0
        var rdir = dirs.1
        if let st = try? Files.fstat(rdir), st.st_nlink == 0 {
            // Someone removed the directory of rotated files (and what was in it).
            do {
                rdir = try Files.ensureDirectory(dir, LogNames.rotatedDirName, label: "\(spool.directory)/\(LogNames.rotatedDirName)", mode: 0o700)
                logger.error("the directory of rotated files was removed; made it again (rotated files in it were lost)", metadata: ["spool.name": "\(spool.name)"])
                let fresh = rdir
                state.withLock { rotatedDirs[spool.name] = fresh }
            } catch {
                logger.error("cannot make the directory of rotated files again", metadata: ["spool.name": "\(spool.name)", "error": "\(error)"])
                backOff(spool, due.map(\.stream))
                return
            }
        }
        var planned: [Rotation] = state.withLock {
            due.map { d in
                let key = "\(spool.name)/\(d.stream)"
                let seq = (lastSeq[key] ?? 0) + 1
                lastSeq[key] = seq
                let r = Rotation(id: nextID, spool: spool.name, stream: d.stream, seq: seq, dev: UInt64(d.st.st_dev), ino: UInt64(d.st.st_ino))
                nextID += 1
                return r
            }
        }
        do {
            try journal.append(planned.map(\.record), sync: true)
        } catch {
            logger.error("cannot record a rotation in the agent state; not rotating for now", metadata: ["spool.name": "\(spool.name)", "error": "\(error)"])
            state.withLock { lastError = "cannot record a rotation: \(error)" }
            backOff(spool, due.map(\.stream))
            return
        }
        var done: [Rotation] = []
        var abandoned: [Rotation] = []
        for var r in planned {
            let label = "\(spool.directory)/\(r.stream)"
            do {
                if try Files.renameNoReplace(dir, r.stream, rdir, r.rawName, label: label) {
                    if let st = try Files.statAt(rdir, r.rawName, label: label) {
                        r.dev = UInt64(st.st_dev); r.ino = UInt64(st.st_ino); r.sizeAtRotation = UInt64(st.st_size)
                    }
                    r.renamed = true
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
        planned = []
        var synced = false
        if !done.isEmpty {
            // The new names must survive a crash before anything is sealed from them (R1).
            do {
                try Files.fsync(rdir)
                try Files.fsync(dir)
                synced = true
            } catch {
                logger.error("cannot sync a log spool directory after rotating; sealing waits for a sync that succeeds", metadata: ["spool.name": "\(spool.name)", "error": "\(error)"])
            }
        }
        if !abandoned.isEmpty { backOff(spool, abandoned.map(\.stream)) }
        state.lock()
        try? journal.append(abandoned.map { StateRecord(op: .done, id: $0.id) }, sync: false)
        for var r in done {
            r.synced = synced
            rotations[r.id] = r
            streams[r.streamKey] = StreamState(expectNew: true)
            logger.debug("rotated", metadata: ["spool.name": "\(r.spool)", "stream": "\(r.stream)", "segment.name": "\(r.rawName)", "bytes": "\(r.sizeAtRotation)"])
        }
        let sealer = done.isEmpty ? nil : sealerWatch
        state.broadcast()
        state.unlock()
        // The sealer saw the rename before the rotation was recorded: it looks again now,
        // instead of at its next timeout (half a second later).
        sealer?.wake()
        if !done.isEmpty { reopenProducers(spool, settings) }
    }

    /// Streams whose rotation failed are not tried again for a few seconds.
    private func backOff(_ spool: SpoolConfig, _ names: [String]) {
        let until = monotonicNow() + 5
        state.withLock {
            for n in names { streams["\(spool.name)/\(n)"]?.retryAfter = until }
        }
    }

    func reopenProducers(_ spool: SpoolConfig, _ settings: LogSettings) {
        switch settings.reopen {
        case .path:
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

    // MARK: sealing

    /// Seals rotated files as soon as no process holds them open for writing: woken by
    /// inotify when a file in a rotated directory is closed after writing or moved in, and
    /// every half second regardless.
    func sealLoop() {
        var ino: Inotify?
        var watched: [String: (UInt64, UInt64)] = [:]
        do { ino = try Inotify() } catch {
            logger.warning("cannot watch the rotated directories; sealing polls instead", metadata: ["error": "\(error)"])
        }
        state.withLock { sealerWatch = ino }
        defer { state.withLock { sealerWatch = nil } }
        while !isStopped {
            heartbeats.beat("sealer")
            if let ino = ino {
                // (Re)watch each rotated directory; one made again gets a new watch.
                for s in logSpools {
                    guard let fd = state.withLock({ rotatedDirs[s.name] }), let st = try? Files.fstat(fd), st.st_nlink > 0 else { continue }
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
        let pending = state.withLock { rotations.values.filter(\.renamed).sorted { $0.id < $1.id } }
        for r in pending {
            if isStopped { return }
            sealRotation(r)
        }
    }

    private func sealRotation(_ r: Rotation) {
        guard let spool = spoolConfig(r.spool), let settings = spool.logs,
            let rdir = state.withLock({ rotatedDirs[r.spool] })
        else { return }
        let rlabel = "\(spool.directory)/\(LogNames.rotatedDirName)"
        do {
            if !r.synced {
                guard let dir = state.withLock({ spoolDirs[r.spool] }) else { return }
                try Files.fsync(rdir)
                try Files.fsync(dir)
                state.withLock { rotations[r.id]?.synced = true }
            }
            guard let raw = try openIfPresent(rdir, r.rawName, label: "\(rlabel)/\(r.rawName)") else {
                // Compressed before a crash (the raw file goes only after the .gz is in place).
                if let gz = try openIfPresent(rdir, r.gzName, label: "\(rlabel)/\(r.gzName)") {
                    let st = try Files.fstat(gz)
                    let crc = try Files.checksum(gz, size: Int64(st.st_size), progress: workProgress)
                    finishSeal(r, name: r.gzName, st: st, size: UInt64(st.st_size), crc: crc)
                } else {
                    rotationLost(r, why: "the rotated file vanished before it was sealed")
                }
                return
            }
            var askAgain = false
            if try stillWritten(r, raw, askAgain: &askAgain) {
                if askAgain { reopenProducers(spool, settings) }
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
            let crc = try Files.checksum(raw, size: Int64(st.st_size), progress: workProgress)
            let after = try Files.fstat(raw)
            guard after.st_size == st.st_size, mtimeNs(after) == mtimeNs(st) else { return }  // written meanwhile: again
            finishSeal(r, name: r.rawName, st: st, size: UInt64(st.st_size), crc: crc)
        } catch is StoppedWork {
            return
        } catch {
            logger.error("cannot seal a rotated log file; will retry", metadata: ["spool.name": "\(r.spool)", "segment.name": "\(r.rawName)", "error": "\(error)"])
            state.withLock { lastError = "cannot seal \(r.spool)/\(r.rawName): \(error)" }
        }
    }

    private func openIfPresent(_ dir: OwnedFD, _ name: String, label: String) throws -> OwnedFD? {
        do {
            return try Files.openBeneath(dir, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK, label: label)
        } catch let e as SyscallError where e.errno == ENOENT {
            return nil
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
        state.lock()
        defer { state.unlock() }
        guard var cur = rotations[r.id] else { return true }
        if !writers {
            if let since = cur.waitingSince, now - since >= Self.writerWarnAfter {
                logger.notice("rotated file closed by its last writer; sealing it", metadata: ["spool.name": "\(r.spool)", "segment.name": "\(r.rawName)"])
            }
            cur.waitingSince = nil
            rotations[r.id] = cur
            return false
        }
        if cur.waitingSince == nil { cur.waitingSince = now }
        if now - cur.waitingSince! >= Self.writerWarnAfter && now - cur.lastWarned >= 60 {
            cur.lastWarned = now
            let st = try? Files.fstat(fd)
            let pids = st.map { Processes.writers(dev: UInt64($0.st_dev), ino: UInt64($0.st_ino)) } ?? []
            logger.warning("rotated log file is still open for writing; it is sealed when the producer closes it (does it reopen its log?)", metadata: [
                "spool.name": "\(r.spool)", "segment.name": "\(r.rawName)", "waiting.seconds": "\(Int(now - cur.waitingSince!))",
                "writer.pids": "\(pids.map(String.init).joined(separator: ","))"])
            lastError = "\(r.spool)/\(r.rawName) is still open for writing by pid(s) \(pids.map(String.init).joined(separator: ","))"
            // The producer may have missed the first request (a restart in between).
            askAgain = true
        }
        rotations[r.id] = cur
        return true
    }

    /// gzips a rotated file into `NAME.SEQ.gz` beside it: a temp file, fdatasync, rename,
    /// directory sync. On any failure (a full disk among them) the segment ships uncompressed,
    /// and the log says so.
    private func compress(_ r: Rotation, _ raw: OwnedFD, size: Int64, level: Int32, rdir: OwnedFD, rlabel: String) throws -> (st: stat, size: UInt64, crc: UInt32)? {
        let tmp = ".\(r.gzName).tmp"
        do {
            let out = try Files.openBeneath(rdir, tmp, O_WRONLY | O_CREAT | O_TRUNC, mode: 0o600, label: "\(rlabel)/\(tmp)")
            let result: (size: UInt64, crc: UInt32)
            do {
                result = try Gzip.compress(raw, size: size, into: out, level: level, progress: workProgress)
                try Files.fdatasync(out)
                let st = try Files.fstat(out)
                try out.close()
                _ = try syscall("renameat", "\(rlabel)/\(r.gzName)") { renameat(rdir.raw, tmp, rdir.raw, r.gzName) }
                return (st, result.size, result.crc)
            } catch {
                try? Files.unlink(rdir, tmp, label: tmp)
                throw error
            }
        } catch {
            if error is StoppedWork { throw error }
            logger.warning("cannot compress a rotated log file; shipping it uncompressed", metadata: [
                "spool.name": "\(r.spool)", "segment.name": "\(r.rawName)", "error": "\(error)"])
            try? Files.unlink(rdir, r.gzName, label: r.gzName)
            return nil
        }
    }

    /// Turns a rotation into a sealed segment, atomically for anyone counting what is left.
    private func finishSeal(_ r: Rotation, name: String, st: stat, size: UInt64, crc: UInt32) {
        state.lock()
        defer { state.unlock() }
        guard rotations[r.id] != nil else { return }
        let s = Segment(id: r.id, spool: r.spool, name: name, kind: .log, dev: UInt64(st.st_dev), ino: UInt64(st.st_ino),
                        size: size, crc: crc, mtimeNs: mtimeNs(st), sealedAt: Date().timeIntervalSince1970)
        do {
            try journal.append([s.sealRecord], sync: false)
        } catch {
            logger.error("cannot write the agent state; will seal again later", metadata: ["error": "\(error)"])
            lastError = "cannot record a sealed segment: \(error)"
            return
        }
        rotations[r.id] = nil
        segments[s.id] = s
        byName["\(s.spool)/\(s.name)"] = s.id
        toOffer.append(s.id)
        logger.debug("sealed", metadata: ["spool.name": "\(s.spool)", "segment.name": "\(s.name)", "bytes": "\(s.size)", "crc": "\(hex32(s.crc))"])
        state.broadcast()
    }

    private func rotationLost(_ r: Rotation, why: String) {
        logger.error("rotated log file lost before it was shipped", metadata: ["spool.name": "\(r.spool)", "segment.name": "\(r.rawName)", "reason": "\(why)"])
        state.withLock {
            try? journal.append([StateRecord(op: .done, id: r.id)], sync: false)
            rotations[r.id] = nil
            state.broadcast()
        }
    }

    /// A sealed log segment whose file changed before it was sent: it becomes a rotation
    /// again (same sequence number), sealed anew by the sealer.
    func sealAgain(_ s: Segment) {
        guard let p = LogNames.parse(segmentName: s.name) else {
            drop(s.id, reason: "the file changed after it was sealed")
            return
        }
        state.lock()
        defer { state.unlock() }
        guard segments[s.id] != nil else { return }
        var r = Rotation(id: nextID, spool: s.spool, stream: p.stream, seq: p.seq, dev: s.dev, ino: s.ino)
        r.renamed = true
        do {
            try journal.append([StateRecord(op: .done, id: s.id), r.record], sync: true)
        } catch {
            logger.error("cannot write the agent state", metadata: ["error": "\(error)"])
            return
        }
        nextID += 1
        sealerWatch?.wake()
        logger.warning("log segment changed after it was sealed; sealing it again", metadata: ["spool.name": "\(s.spool)", "segment.name": "\(s.name)"])
        segments[s.id] = nil
        byName["\(s.spool)/\(s.name)"] = nil
        rotations[r.id] = r
        state.broadcast()
    }

    // MARK: recovery

    /// After a restart: finishes rotations whose rename did not happen, and adopts files in a
    /// rotated directory that the journal does not know (a crash after the rename, or a lost
    /// state dir), so that nothing rotated is left behind. Runs before any thread starts.
    func recoverRotations() throws {
        for spool in logSpools {
            guard let dir = spoolDirs[spool.name], let rdir = rotatedDirs[spool.name] else { continue }
            let rlabel = "\(spool.directory)/\(LogNames.rotatedDirName)"
            var present = Set((try? FileManager.default.contentsOfDirectory(atPath: rlabel)) ?? [])
            var renamedNow = false
            for (id, var r) in rotations where r.spool == spool.name {
                // Its producer may never have been told to reopen (a crash right after the
                // rename): tell it again; once more does no harm.
                reopenAfterRecovery.insert(spool.name)
                if present.contains(r.rawName) || present.contains(r.gzName) {
                    if let st = try Files.statAt(rdir, r.rawName, label: r.rawName) { r.sizeAtRotation = UInt64(st.st_size) }
                    r.renamed = true
                } else if let st = try Files.statAt(dir, r.stream, label: "\(spool.directory)/\(r.stream)"),
                    UInt64(st.st_dev) == r.dev, UInt64(st.st_ino) == r.ino,
                    try Files.renameNoReplace(dir, r.stream, rdir, r.rawName, label: "\(spool.directory)/\(r.stream)")
                {
                    // Journaled, then the agent stopped before the rename: finish it.
                    logger.notice("finishing a rotation interrupted by a restart", metadata: ["spool.name": "\(spool.name)", "segment.name": "\(r.rawName)"])
                    r.renamed = true
                    r.sizeAtRotation = UInt64(st.st_size)
                    present.insert(r.rawName)
                    renamedNow = true
                    reopenAfterRecovery.insert(spool.name)
                } else {
                    logger.error("rotated log file lost before it was shipped", metadata: ["spool.name": "\(spool.name)", "segment.name": "\(r.rawName)", "reason": "not found after a restart"])
                    try journal.append([StateRecord(op: .done, id: id)], sync: false)
                    rotations[id] = nil
                    continue
                }
                rotations[id] = r
            }
            if renamedNow {
                try Files.fsync(rdir)
                try Files.fsync(dir)
            }
            // Files the journal does not account for.
            let sealed = Set(segments.values.filter { $0.spool == spool.name && $0.kind == .log }.map(\.name))
            let rotating = Set(rotations.values.filter { $0.spool == spool.name }.flatMap { [$0.rawName, $0.gzName] })
            var adopted: [Rotation] = []
            for name in present.sorted() {
                if name.hasPrefix(".") {
                    if name.hasSuffix(".tmp") { try? Files.unlink(rdir, name, label: "\(rlabel)/\(name)") }
                    continue  // reaper leftovers are the reaper's
                }
                if sealed.contains(name) || rotating.contains(name) { continue }
                guard let p = LogNames.parse(segmentName: name) else {
                    logger.warning("unknown file in the rotated directory; leaving it", metadata: ["path": "\(rlabel)/\(name)"])
                    continue
                }
                let raw = LogNames.segmentName(stream: p.stream, seq: p.seq, compressed: false)
                if !p.compressed && sealed.contains(LogNames.segmentName(stream: p.stream, seq: p.seq, compressed: true)) {
                    // Compressed and sealed; the agent stopped before removing the original.
                    try Files.unlink(rdir, name, label: "\(rlabel)/\(name)")
                    continue
                }
                if p.compressed && present.contains(raw) {
                    // Both, unknown: the original is the truth; compress it again.
                    try Files.unlink(rdir, name, label: "\(rlabel)/\(name)")
                    continue
                }
                guard let st = try Files.statAt(rdir, name, label: "\(rlabel)/\(name)"), (st.st_mode & S_IFMT) == S_IFREG else { continue }
                let key = "\(spool.name)/\(p.stream)"
                lastSeq[key] = max(lastSeq[key] ?? 0, p.seq)
                var r = Rotation(id: nextID, spool: spool.name, stream: p.stream, seq: p.seq, dev: UInt64(st.st_dev), ino: UInt64(st.st_ino))
                nextID += 1
                r.renamed = true
                r.sizeAtRotation = UInt64(st.st_size)
                adopted.append(r)
                logger.notice("adopting a rotated file the agent state did not know", metadata: ["spool.name": "\(spool.name)", "segment.name": "\(name)"])
            }
            try journal.append(adopted.map(\.record), sync: true)
            for r in adopted { rotations[r.id] = r }
            if !adopted.isEmpty { reopenAfterRecovery.insert(spool.name) }
        }
    }

    // MARK: spool directories that come and go

    /// Spools whose directory was removed (or moved away) and exists again at its path: their
    /// handles are replaced, so that they are watched and shipped again. Called by the watcher.
    func reopenReplacedDirectories() -> [SpoolConfig] {
        var back: [SpoolConfig] = []
        for spool in config.spools {
            guard let fd = state.withLock({ spoolDirs[spool.name] }), let cur = try? Files.fstat(fd) else { continue }
            var st = stat()
            let atPath = fstatat(AT_FDCWD, spool.directory, &st, 0) == 0
            if cur.st_nlink > 0 && atPath && st.st_dev == cur.st_dev && st.st_ino == cur.st_ino { continue }
            guard atPath, let fresh = try? Files.openDirectory(spool.directory) else {
                if !missingDirs.contains(spool.name) {
                    missingDirs.insert(spool.name)
                    logger.error("spool directory is gone; waiting for it to come back", metadata: ["spool.name": "\(spool.name)", "path": "\(spool.directory)"])
                }
                continue
            }
            var rotated: OwnedFD?
            if spool.logs != nil {
                do {
                    rotated = try Files.ensureDirectory(fresh, LogNames.rotatedDirName, label: "\(spool.directory)/\(LogNames.rotatedDirName)", mode: 0o700)
                } catch {
                    if !missingDirs.contains(spool.name) {
                        missingDirs.insert(spool.name)
                        logger.error("cannot make the directory of rotated files", metadata: ["spool.name": "\(spool.name)", "error": "\(error)"])
                    }
                    continue
                }
            }
            missingDirs.remove(spool.name)
            logger.notice("spool directory is back; watching it again", metadata: ["spool.name": "\(spool.name)", "path": "\(spool.directory)"])
            state.withLock {
                spoolDirs[spool.name] = fresh
                if let r = rotated { rotatedDirs[spool.name] = r }
                for k in streams.keys where k.hasPrefix("\(spool.name)/") { streams[k] = nil }
            }
            back.append(spool)
        }
        return back
    }
}
