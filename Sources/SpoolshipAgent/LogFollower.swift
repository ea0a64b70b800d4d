import Foundation
import Glibc
import Logging
import SpoolshipCore
import SpoolshipIO
import SpoolshipDaemon

/// The log follower: the log spools whose producers never reopen (`reopen = "never"`). It
/// never renames a file. Each file matching the spool's glob is a stream; the follower opens
/// each file of a stream at first sight and holds it, whatever becomes of its name (logrotate
/// renames it, compresses and deletes it), and cuts the file's growth into segments
/// `NAME.<SEQ>`, each a byte range of one file, checksummed here and sent with sendfile from
/// its offset by the session. When is a cut due, where does it end, and in which order the
/// files go is `FollowStream`'s (SpoolshipCore), held to a model test.
///
/// Each range's seal is synced before it is offered: after a crash the next range starts
/// exactly where the last recorded one ended, never cut again elsewhere (which would send
/// bytes twice under two names). Acknowledged ranges are recorded done; the file is never
/// removed (it is the producer's, or logrotate's).
///
/// A file that shrinks below its cut point (copytruncate) is followed again from its start;
/// the rest of what was there is shipped from logrotate's copy when the copy is found beside
/// it (same bytes before the cut point), and what cannot be shipped is counted and logged. A
/// file whose last 4 KiB before the cut point changed was rewritten in place: it is followed
/// again from its start.
///
/// `@unchecked Sendable`: every stored `var` is read and written only while holding `lock`
/// (the follower's thread; compaction and `sealAgain` from other threads); the `let`s are
/// Sendable or thread-safe.
final class LogFollower: @unchecked Sendable {
    private let spools: [SpoolConfig]
    private let dirs: SpoolDirectories
    private let queue: SegmentQueue
    private let ids: SegmentIDs
    private let journal: AgentJournal
    private let leftBehind: LeftBehindFiles
    private let health: AgentHealth
    private let threads: AgentThreads
    private let logger: Logger
    private let stats: AgentStats

    private let lock = NSLock()
    // Under `lock`:
    /// Each stream, by `spool/stream`.
    private var streams: [String: Followed] = [:]
    /// The last sequence number used, by `spool/stream`.
    private var lastSeq: [String: UInt64]
    /// Positions from the journal whose files have not been seen since the start.
    private var restored: [FileIdentity: FollowPosition]
    /// logrotate's copies of truncated files, by the truncated file: ranges cut from the
    /// original before the truncation and not sent yet are sent from the copy.
    private var copies: [FileIdentity: (id: FileIdentity, fd: OwnedFD, size: UInt64)] = [:]
    /// How many times each file was started over (see `Segment.followEpoch`).
    private var epochs: [FileIdentity: Int] = [:]
    /// Finished files whose ranges are not all done yet: their positions stay in the journal
    /// (a restart must find them for those ranges) until the last is.
    private var retired: [FileIdentity: FollowPosition] = [:]
    /// After a failure to record what was cut (a full state disk), no cut before this time.
    private var cutPausedUntil = 0.0
    /// When `forgetRetired` last looked (it reads the whole queue: once a second at most).
    private var retiredLookedAt = 0.0
    private var inotify: Inotify?

    /// One stream: its files (`FollowStream`), and a descriptor of each, held from first sight.
    struct Followed {
        var spool: String
        var name: String
        var stream = FollowStream()
        var fds: [FileIdentity: OwnedFD] = [:]
        /// When each file no longer under the name was last asked whether anyone writes it.
        var writersAsked: [FileIdentity: Double] = [:]
        var warnedNotRegular = false
    }

    /// While a stream holds uncut bytes (or old files), the follower looks this often;
    /// otherwise it sleeps in inotify until a file changes.
    static let tick = 0.01
    /// A file no longer under its name is asked whether anyone writes it at most this often.
    static let writersEvery = 0.5

    init(spools: [SpoolConfig], dirs: SpoolDirectories, queue: SegmentQueue, ids: SegmentIDs, journal: AgentJournal,
         leftBehind: LeftBehindFiles, health: AgentHealth, threads: AgentThreads, logger: Logger, stats: AgentStats,
         lastSeq: [String: UInt64], positions: [FileIdentity: FollowPosition]) {
        self.spools = spools.filter { $0.logs?.follows == true }
        self.dirs = dirs
        self.queue = queue
        self.ids = ids
        self.journal = journal
        self.leftBehind = leftBehind
        self.health = health
        self.threads = threads
        self.logger = logger
        self.stats = stats
        let names = Set(self.spools.map(\.name))
        self.lastSeq = lastSeq.filter { k, _ in names.contains(String(k.prefix { $0 != "/" })) }
        self.restored = positions.filter { names.contains($0.value.spool) }
        threads.onStop { [self] in wake() }
    }

    private func locked<R>(_ body: () throws -> R) rethrows -> R {
        lock.lock()
        defer { lock.unlock() }
        return try body()
    }

    func wake() { locked { inotify }?.wake() }

    var isEmpty: Bool { spools.isEmpty }

    // MARK: start-up

    /// At start, before any thread: finds the files the journal followed, by identity,
    /// wherever they are in their spool directory now (logrotate may have renamed them while
    /// the agent was down), and holds them. A file that is gone took its unshipped bytes with
    /// it: said so.
    func restore() {
        locked {
            for spool in spools {
                guard let dir = dirs.spool(spool.name) else { continue }
                let wanted = restored.filter { $0.value.spool == spool.name }
                guard !wanted.isEmpty, let entries = try? Files.entries(of: dir) else { continue }
                let byInode = Dictionary(grouping: wanted.keys, by: { "\($0.dev):\($0.ino)" })
                var found: [(name: String, id: FileIdentity, fd: OwnedFD)] = []
                for e in entries {
                    guard let n = e.name, let st = try? Files.statAt(dir, n, label: n), (st.st_mode & S_IFMT) == S_IFREG,
                          byInode["\(st.st_dev):\(st.st_ino)"] != nil,
                          let fd = try? Files.openIfPresent(dir, n, label: "\(spool.directory)/\(n)"),
                          let fst = try? Files.fstat(fd), fst.st_ino == st.st_ino, let birth = try? Files.birth(fd)
                    else { continue }
                    let id = FileIdentity(dev: UInt64(fst.st_dev), ino: UInt64(fst.st_ino), birth: birth)
                    if wanted[id] != nil { found.append((n, id, fd)) }
                }
                // Oldest first; the one under its stream's name last (a copytruncate copy is born
                // after the file it copies, but holds its earlier bytes).
                func order(_ f: (name: String, id: FileIdentity, fd: OwnedFD)) -> (Int, Int64, UInt64) {
                    (f.name == wanted[f.id]?.stream ? 1 : 0, f.id.birth, f.id.ino)
                }
                for f in found.sorted(by: { order($0) < order($1) }) {
                    guard let pos = restored.removeValue(forKey: f.id) else { continue }
                    let key = "\(spool.name)/\(pos.stream)"
                    var s = streams[key] ?? Followed(spool: spool.name, name: pos.stream)
                    s.fds[f.id] = f.fd
                    let size = (try? Files.fstat(f.fd)).map { UInt64($0.st_size) } ?? pos.offset
                    let seen = min(size, pos.limit ?? .max)
                    var file = FollowedFile(identity: f.id, cutEnd: pos.offset, size: max(seen, pos.offset), current: false)
                    file.pendingSince = seen > pos.offset ? monotonicNow() : nil
                    file.tail = pos.tailCheck
                    file.limit = pos.limit
                    s.stream.adopt(file)
                    if f.name != pos.stream { s.stream.nameGone() }
                    streams[key] = s
                    if f.name != pos.stream {
                        logger.notice("following a log file renamed while the agent was down, from where it was cut", metadata: [
                            "spool.name": "\(spool.name)", "stream": "\(pos.stream)", "path": "\(spool.directory)/\(f.name)", "offset": "\(pos.offset)"])
                    }
                }
            }
            for (id, pos) in restored.sorted(by: { ($0.key.birth, $0.key.ino) < ($1.key.birth, $1.key.ino) }) {
                // Deleted while the agent was down, but a producer that never reopens may
                // still hold it, and write into it: the way back is through its descriptor.
                if let fd = Processes.openHeld(dev: id.dev, ino: id.ino), (try? Files.birth(fd)) == id.birth {
                    let key = "\(pos.spool)/\(pos.stream)"
                    var s = streams[key] ?? Followed(spool: pos.spool, name: pos.stream)
                    s.fds[id] = fd
                    let size = (try? Files.fstat(fd)).map { UInt64($0.st_size) } ?? pos.offset
                    var file = FollowedFile(identity: id, cutEnd: pos.offset, size: max(size, pos.offset), current: false)
                    file.pendingSince = size > pos.offset ? monotonicNow() : nil
                    file.tail = pos.tailCheck
                    // Before the files found by name: it is older than any file now under a name.
                    s.stream.insertFirst(file)
                    streams[key] = s
                    logger.notice("following a log file deleted while the agent was down, through the descriptor of a process that still holds it", metadata: [
                        "spool.name": "\(pos.spool)", "stream": "\(pos.stream)", "file": "\(id)", "via": "\(fd.label)", "offset": "\(pos.offset)"])
                    continue
                }
                logger.error("a followed log file is gone (deleted while the agent was down, and no process holds it); what it held past the last cut point was not shipped", metadata: [
                    "spool.name": "\(pos.spool)", "stream": "\(pos.stream)", "file": "\(id)", "offset": "\(pos.offset)"])
            }
            restored.removeAll()
        }
    }

    /// A range recorded in the journal before the last stop: gets the descriptor of its file,
    /// if its file was found and still holds it. A range without one is still offered: the
    /// collector may hold it already (committed, its acknowledgement lost in the stop); only
    /// if the collector asks for its bytes is it counted lost (`AgentSession.sendRange`).
    func attach(_ s: inout Segment) -> Bool {
        var fd: OwnedFD? = locked {
            for f in streams.values { if let fd = f.fds[s.identity] { return fd } }
            return nil
        }
        if fd == nil && s.moved { fd = find(s.identity, in: s.spool) }
        if let fd, let st = try? Files.fstat(fd), UInt64(st.st_size) >= (s.offset ?? 0) + s.size { s.source = fd }
        return true
    }

    /// A file of a spool's directory by identity (logrotate's copy that a moved range is read
    /// from), opened.
    private func find(_ id: FileIdentity, in spool: String) -> OwnedFD? {
        guard let config = spools.first(where: { $0.name == spool }), let dir = dirs.spool(spool),
              let names = try? Files.names(of: dir) else { return nil }
        for n in names {
            guard let st = try? Files.statAt(dir, n, label: n), UInt64(st.st_dev) == id.dev, UInt64(st.st_ino) == id.ino,
                  let fd = try? Files.openIfPresent(dir, n, label: "\(config.directory)/\(n)"), (try? Files.birth(fd)) == id.birth
            else { continue }
            return fd
        }
        return nil
    }

    /// For compaction: where each held file's next range starts, and each stream's last
    /// sequence number.
    func state() -> (positions: [FollowPosition], lastSeq: [String: UInt64]) {
        locked {
            var out: [FollowPosition] = []
            for f in streams.values {
                for file in f.stream.files {
                    out.append(FollowPosition(spool: f.spool, stream: f.name, identity: file.identity, offset: file.cutEnd, tail: file.tail?.crc,
                                              limit: file.limit))
                }
            }
            return (out + retired.values, lastSeq)
        }
    }

    /// Files held, by spool (for the status).
    func fileCounts() -> [String: Int] {
        locked {
            var out: [String: Int] = [:]
            for f in streams.values { out[f.spool, default: 0] += f.stream.files.count }
            return out
        }
    }

    // MARK: the follower's thread

    func run() {
        var ino: Inotify?
        do { ino = try Inotify() } catch {
            logger.warning("cannot watch the followed log spools; polling them instead", metadata: ["error": "\(error)"])
        }
        locked { inotify = ino }
        defer { locked { inotify = nil } }
        var watched: [String: (UInt64, UInt64)] = [:]
        var lastList = 0.0
        while !threads.isStopped {
            threads.heartbeats.beat("follower")
            let now = monotonicNow()
            let list = now - lastList >= 1
            if list {
                lastList = now
                if let ino {
                    for s in spools {
                        guard let fd = dirs.spool(s.name), let st = try? Files.fstat(fd) else { continue }
                        let id = (UInt64(st.st_dev), UInt64(st.st_ino))
                        if let w = watched[s.name], w == id { continue }
                        let mask = UInt32(IN_MODIFY | IN_CREATE | IN_MOVED_TO | IN_MOVED_FROM | IN_DELETE | IN_ONLYDIR)
                        if (try? ino.watch(s.directory, mask: mask)) != nil { watched[s.name] = id }
                    }
                }
            }
            let busy = pass(all: false, discover: list)
            if busy || ino == nil {
                threads.pause(ino == nil ? 0.1 : Self.tick, beat: "follower")
                _ = try? ino?.read(timeout: 0)
            } else {
                do { _ = try ino?.read(timeout: 0.5) } catch {
                    logger.error("reading inotify events failed; polling the followed log spools", metadata: ["error": "\(error)"])
                    ino = nil
                }
            }
        }
    }

    /// Looks at every stream once and seals what is due (everything there is with `all`, as
    /// `--once` does). Returns whether some stream holds bytes not cut yet or files no longer
    /// under its name: then the next look comes after `tick`, not at the next event.
    @discardableResult
    func pass(all: Bool, discover: Bool = true) -> Bool {
        var sealed: [Segment] = []
        var moves: [(key: String, cuts: [FollowCut], tails: [FileIdentity: TailCheck], seq: UInt64)] = []
        var busy = false
        let cutting = all || monotonicNow() >= locked { cutPausedUntil }
        forgetRetired()
        for spool in spools {
            guard let settings = spool.logs, let dir = dirs.spool(spool.name) else { continue }
            if discover || all { discoverStreams(spool, settings, dir) }
            let keys = locked { streams.keys.filter { $0.hasPrefix("\(spool.name)/") }.sorted() }
            for key in keys {
                guard var f = locked({ streams[key] }) else { continue }
                let now = monotonicNow()
                look(&f, spool, dir, now: now)
                var seq = locked { lastSeq[key] ?? 0 }
                let (cuts, tails, segments) = cutting ? cut(&f, spool, settings, now: now, all: all, seq: &seq) : ([], [:], [])
                retireFinished(&f)
                locked { streams[key] = f }
                if !segments.isEmpty {
                    sealed += segments
                    moves.append((key, cuts, tails, seq))
                }
                if f.stream.pending > 0 || f.stream.files.contains(where: { !$0.current }) { busy = true }
            }
        }
        guard !sealed.isEmpty else { return busy }
        do {
            try queue.admit(sealed, sync: true)
        } catch {
            logger.error("cannot record the ranges cut from followed log files; cutting them again in a second", metadata: ["error": "\(error)"])
            health.error("cannot record a sealed segment: \(error)")
            locked { cutPausedUntil = monotonicNow() + 1 }
            return true
        }
        let now = monotonicNow()
        locked {
            for m in moves {
                guard var f = streams[m.key] else { continue }
                f.stream.applied(m.cuts, tails: m.tails, now: now)
                streams[m.key] = f
                lastSeq[m.key] = max(lastSeq[m.key] ?? 0, m.seq)
            }
        }
        return true
    }

    /// Lets go of the files that are finished (the ranges in flight hold their own
    /// descriptors); their positions are forgotten once their last range is done.
    private func retireFinished(_ f: inout Followed) {
        for done in f.stream.dropFinished() {
            f.fds[done.identity] = nil
            f.writersAsked[done.identity] = nil
            locked {
                retired[done.identity] = FollowPosition(spool: f.spool, stream: f.name, identity: done.identity, offset: done.cutEnd, tail: done.tail?.crc, limit: done.limit)
            }
            logger.debug("followed log file finished", metadata: ["spool.name": "\(f.spool)", "stream": "\(f.name)", "file": "\(done.identity)"])
        }
    }

    /// Writes `unfollow` for the retired files none of whose ranges is live any more.
    private func forgetRetired() {
        let ids: [FileIdentity] = locked {
            let now = monotonicNow()
            guard !retired.isEmpty, now - retiredLookedAt >= 1 else { return [] }
            retiredLookedAt = now
            return Array(retired.keys)
        }
        guard !ids.isEmpty else { return }
        let live = Set(queue.all.filter(\.isFollowed).map(\.identity))
        let gone = ids.filter { !live.contains($0) }
        guard !gone.isEmpty, (try? journal.append(gone.map(FollowPosition.unfollow), sync: false)) != nil else { return }
        locked { for id in gone { retired[id] = nil } }
    }

    /// Adds the spool's files that match its glob and are not streams yet.
    private func discoverStreams(_ spool: SpoolConfig, _ settings: LogSettings, _ dir: OwnedFD) {
        guard let names = try? Files.names(of: dir) else { return }
        for n in names where LogNames.matches(settings.glob, n) {
            let key = "\(spool.name)/\(n)"
            if locked({ streams[key] == nil }) && streamNameUsable(spool, n) {
                locked { streams[key] = Followed(spool: spool.name, name: n) }
            }
        }
    }

    private func streamNameUsable(_ spool: SpoolConfig, _ name: String) -> Bool {
        LogRotator.streamNameUsable(spool, name, leftBehind: leftBehind, logger: logger)
    }

    /// One look at a stream: the file under its name (a new one is opened and held at once),
    /// then every file's size, newest first (see `FollowStream.plan`), each file no longer under
    /// the name asked first whether anyone still writes it.
    private func look(_ f: inout Followed, _ spool: SpoolConfig, _ dir: OwnedFD, now: Double) {
        let label = "\(spool.directory)/\(f.name)"
        do {
            if let st = try Files.statAt(dir, f.name, label: label) {
                if (st.st_mode & S_IFMT) != S_IFREG {
                    if !f.warnedNotRegular {
                        logger.warning("a name matching the log glob is not a regular file; ignoring it", metadata: ["spool.name": "\(spool.name)", "stream": "\(f.name)"])
                        f.warnedNotRegular = true
                    }
                    f.stream.nameGone()
                } else if f.stream.current.map({ $0.identity.dev != UInt64(st.st_dev) || $0.identity.ino != UInt64(st.st_ino) }) ?? true,
                          let fd = try Files.openIfPresent(dir, f.name, label: label) {
                    let fst = try Files.fstat(fd)
                    let id = FileIdentity(dev: UInt64(fst.st_dev), ino: UInt64(fst.st_ino), birth: try Files.birth(fd))
                    if f.fds[id] == nil {
                        f.fds[id] = fd
                        logger.debug("following log file", metadata: ["spool.name": "\(spool.name)", "stream": "\(f.name)", "file": "\(id)", "bytes": "\(fst.st_size)"])
                    }
                    f.stream.adopt(FollowedFile(identity: id, current: true))
                }
            } else {
                f.stream.nameGone()
            }
        } catch {
            logger.error("cannot look at a followed log file", metadata: ["spool.name": "\(spool.name)", "stream": "\(f.name)", "error": "\(error)"])
        }
        for file in f.stream.files.reversed() {
            guard let fd = f.fds[file.identity] else { continue }
            do {
                if !file.current && now - (f.writersAsked[file.identity] ?? 0) >= Self.writersEvery {
                    f.writersAsked[file.identity] = now
                    let writers: Bool
                    if let held = Files.hasWriters(fd) {
                        writers = held
                    } else {
                        writers = !Processes.writers(dev: file.identity.dev, ino: file.identity.ino).isEmpty
                    }
                    f.stream.setWriters(file.identity, writers)
                }
                let size = UInt64(try Files.fstat(fd).st_size)
                if let s = f.stream.observe(file.identity, size: size, now: now) {
                    report(s, &f, spool, dir)
                }
            } catch {
                logger.error("cannot look at a followed log file", metadata: ["spool.name": "\(spool.name)", "stream": "\(f.name)", "error": "\(error)"])
            }
        }
    }

    /// Seals the ranges that are due: checks each file's tail first (rewritten in place?),
    /// then checksums each range. Returns the cuts, the new tail checks and the segments.
    private func cut(_ f: inout Followed, _ spool: SpoolConfig, _ settings: LogSettings, now: Double, all: Bool,
                     seq: inout UInt64) -> ([FollowCut], [FileIdentity: TailCheck], [Segment]) {
        let fds = f.fds
        let cuts: [FollowCut]
        do {
            cuts = try f.stream.plan(now: now, rotateSize: settings.rotateSize, rotateAge: settings.rotateAge, all: all) { id, from, to in
                guard let fd = fds[id] else { return nil }
                return try Files.lastNewline(fd, from: from, to: to)
            }
        } catch {
            // Shorter than it was a moment ago: the next look says what happened.
            return ([], [:], [])
        }
        guard !cuts.isEmpty else { return ([], [:], []) }
        var done: [FollowCut] = []
        var tails: [FileIdentity: TailCheck] = [:]
        var segments: [Segment] = []
        var checked: [FileIdentity: TailCheck?] = [:]
        func intact(_ fd: OwnedFD, _ t: TailCheck, to: UInt64) throws -> Bool {
            var crc = CRC32()
            try Files.checksum(fd, from: Int64(t.from), to: Int64(to), into: &crc)
            return crc.value == t.crc
        }
        for c in cuts {
            guard let fd = fds[c.file], let file = f.stream.files.first(where: { $0.identity == c.file }) else { break }
            do {
                if checked[c.file] == nil {
                    // The bytes before the cut point are still those that were cut: else the
                    // file was rewritten in place.
                    if let t = file.tail, try !intact(fd, t, to: file.cutEnd) {
                        if let s = f.stream.rewritten(c.file, now: now) { report(s, &f, spool, nil) }
                        break
                    }
                    checked[c.file] = .some(file.tail)
                }
                var crc = CRC32()
                try Files.checksum(fd, from: Int64(c.from), to: Int64(c.to), into: &crc, progress: threads.workProgress)
                // And still, after the range was read: a file cut short and written again
                // while it was read would give a range of two contents (the next look says
                // what happened).
                if let t = checked[c.file] ?? nil, try !intact(fd, t, to: c.from) { break }
                let tailFrom = c.to >= TailCheck.window ? c.to - TailCheck.window : 0
                var tail = CRC32()
                try Files.checksum(fd, from: Int64(tailFrom), to: Int64(c.to), into: &tail)
                // Truncated while it was read: what was read may mix old and new bytes.
                let after = try Files.fstat(fd)
                guard UInt64(after.st_size) >= c.to else { break }
                seq += 1
                var s = Segment(id: ids.next(), spool: spool.name, name: LogNames.segmentName(stream: f.name, seq: seq, compressed: false),
                                kind: .log, dev: c.file.dev, ino: c.file.ino, size: c.length, crc: crc.value, mtimeNs: mtimeNanoseconds(after),
                                sealedAt: Date().timeIntervalSince1970)
                s.offset = c.from
                s.birth = c.file.birth
                s.source = fd
                s.followEpoch = locked { epochs[c.file] ?? 0 }
                s.tail = tail.value
                segments.append(s)
                tails[c.file] = TailCheck(from: tailFrom, crc: tail.value)
                checked[c.file] = .some(tails[c.file])
                done.append(c)
            } catch is StoppedWork {
                break
            } catch {
                logger.error("cannot read a followed log file", metadata: ["spool.name": "\(spool.name)", "stream": "\(f.name)", "error": "\(error)"])
                break
            }
        }
        return (done, tails, segments)
    }

    /// Says what a look found, counts what cannot be shipped, and records the new start of a
    /// file followed again from its start. For a truncation, looks for logrotate's copy beside
    /// the file (`dir`), and ships the rest from it.
    private func report(_ s: FollowSurprise, _ f: inout Followed, _ spool: SpoolConfig, _ dir: OwnedFD?) {
        let file: FileIdentity
        var lost: UInt64
        switch s {
        case .truncated(let id, let c, let u, let now, let tail):
            file = id
            lost = u
            var from = "nowhere"
            // A copy found at an earlier truncation holds an earlier content: never this one's.
            locked { copies[id] = nil }
            if let dir, let tail, let copy = findCopy(of: id, tail: tail, f, spool, dir, cutEnd: c) {
                // The copy holds what the original held when logrotate copied it: the rest
                // after the cut point ships from it, before the file's new bytes.
                // Up to its last newline: a last record logrotate caught half written is torn.
                let copySize = UInt64((try? Files.fstat(copy.fd)).map { $0.st_size } ?? 0)
                let whole = ((try? Files.lastNewline(copy.fd, from: c, to: copySize)) ?? nil).map { $0 + 1 } ?? c
                lost = (c + u > whole ? c + u - whole : 0)
                from = copy.name
                var old = FollowedFile(identity: copy.id, cutEnd: c, size: whole, current: false)
                old.limit = whole
                old.pendingSince = monotonicNow()
                old.tail = tail
                f.fds[copy.id] = copy.fd
                f.stream.insertBefore(id, old)
                locked { copies[id] = (copy.id, copy.fd, whole) }
                // Recorded before anything is cut from it: after a restart the copy goes on
                // from the original's cut point, not from the ranges re-sealed against it.
                let at = FollowPosition(spool: spool.name, stream: f.name, identity: copy.id, offset: c, tail: old.tail?.crc, limit: whole)
                try? journal.append([at.record], sync: false)
            }
            logger.error("followed log file was truncated (copytruncate?); following it again from its start", metadata: [
                "spool.name": "\(spool.name)", "stream": "\(f.name)", "cut.point": "\(c)", "size.now": "\(now)",
                "rest.shipped.from": "\(from)", "bytes.lost.at.least": "\(lost)"])
            stats.followSurprise(spool: spool.name, truncated: true, lost: lost)
        case .rewritten(let id, let c, let u):
            file = id
            lost = u
            locked { copies[id] = nil }
            logger.error("followed log file was rewritten in place under bytes already shipped; following it again from its start (its new content ships whole)", metadata: [
                "spool.name": "\(spool.name)", "stream": "\(f.name)", "cut.point": "\(c)", "bytes.lost.at.least": "\(u)"])
            stats.followSurprise(spool: spool.name, truncated: false, lost: lost)
        }
        locked { epochs[file, default: 0] += 1 }
        resolveStale(file, f, spool, dir)
        health.error("\(spool.name)/\(f.name) was \(s.isTruncation ? "truncated" : "rewritten") under the follower; at least \(lost) byte(s) not shipped")
        let start = FollowPosition(spool: spool.name, stream: f.name, identity: file, offset: 0)
        try? journal.append([start.record], sync: false)
    }

    /// The ranges cut from a file's earlier content and not acknowledged yet: each is sent
    /// from a file beside it that holds its bytes as cut (same checksum): logrotate's copy
    /// found for this truncation, or another copy in the directory (one made before the agent's
    /// last cut, shorter than the cut point, still holds the ranges before it). Sealed again
    /// against that file, marked as moved (a moved range does not move that file's position).
    /// The others stay as they are: the collector may hold them already; if it asks for their
    /// bytes, they are counted lost then (`AgentSession.sendRange`).
    private func resolveStale(_ file: FileIdentity, _ f: Followed, _ spool: SpoolConfig, _ dir: OwnedFD?) {
        let stale = queue.all.filter { $0.isFollowed && !$0.acked && $0.identity == file }.sorted { $0.id < $1.id }
        guard !stale.isEmpty else { return }
        var candidates: [(id: FileIdentity, fd: OwnedFD, size: UInt64)] = []
        if let c = locked({ copies[file] }) { candidates.append(c) }
        if let dir, let names = try? Files.names(of: dir) {
            let held = Set(f.fds.keys.map { "\($0.dev):\($0.ino)" })
            for n in names where n != f.name {
                guard let st = try? Files.statAt(dir, n, label: n), (st.st_mode & S_IFMT) == S_IFREG,
                      !held.contains("\(st.st_dev):\(st.st_ino)"),
                      let fd = try? Files.openIfPresent(dir, n, label: "\(spool.directory)/\(n)"),
                      let fst = try? Files.fstat(fd), let birth = try? Files.birth(fd) else { continue }
                candidates.append((FileIdentity(dev: UInt64(fst.st_dev), ino: UInt64(fst.st_ino), birth: birth), fd, UInt64(fst.st_size)))
            }
        }
        for s in stale {
            let start = s.offset ?? 0, end = start + s.size
            let holder = candidates.first { c in
                var crc = CRC32()
                return c.size >= end && (try? Files.checksum(c.fd, from: Int64(start), to: Int64(end), into: &crc)) != nil && crc.value == s.crc
            }
            guard let c = holder else { continue }
            var moved = s
            moved.id = ids.next()
            moved.dev = c.id.dev; moved.ino = c.id.ino; moved.birth = c.id.birth
            moved.source = c.fd
            moved.moved = true
            moved.followEpoch = locked { epochs[c.id] ?? 0 }
            guard queue.forget(s.id, retry: { _ in false }) != nil else { continue }
            do { try queue.admit([moved], sync: true) } catch {
                logger.error("cannot write the agent state; the range is not shipped", metadata: [
                    "spool.name": "\(s.spool)", "segment.name": "\(s.name)", "error": "\(error)", "bytes.lost.at.least": "\(s.size)"])
                stats.followLost(spool: s.spool, bytes: s.size)
            }
        }
    }

    /// logrotate's copytruncate copy of a file: a regular file in the spool directory, other
    /// than the followed ones, at least `cutEnd` long, whose bytes before `cutEnd` end as the
    /// original's did (its tail check), opened and held.
    private func findCopy(of id: FileIdentity, tail: TailCheck, _ f: Followed, _ spool: SpoolConfig, _ dir: OwnedFD,
                          cutEnd: UInt64) -> (name: String, id: FileIdentity, fd: OwnedFD)? {
        guard cutEnd > 0, let names = try? Files.names(of: dir) else { return nil }
        let held = Set(f.fds.keys.map { "\($0.dev):\($0.ino)" })
        for n in names where n != f.name {
            guard let st = try? Files.statAt(dir, n, label: n), (st.st_mode & S_IFMT) == S_IFREG, UInt64(st.st_size) >= cutEnd,
                  !held.contains("\(st.st_dev):\(st.st_ino)"),
                  let fd = try? Files.openIfPresent(dir, n, label: "\(spool.directory)/\(n)") else { continue }
            var crc = CRC32()
            guard (try? Files.checksum(fd, from: Int64(tail.from), to: Int64(cutEnd), into: &crc)) != nil, crc.value == tail.crc,
                  let fst = try? Files.fstat(fd), let birth = try? Files.birth(fd) else { continue }
            return (n, FileIdentity(dev: UInt64(fst.st_dev), ino: UInt64(fst.st_ino), birth: birth), fd)
        }
        return nil
    }

    // MARK: other threads

    /// A range cut from a file that was truncated before the range was sent: the copy
    /// logrotate made of the file, if the follower found it and it holds the range (the
    /// collector's checksum check stands behind it).
    func copy(of s: Segment) -> OwnedFD? { copyHolding(s)?.fd }

    private func copyHolding(_ s: Segment) -> (id: FileIdentity, fd: OwnedFD, size: UInt64)? {
        let end = (s.offset ?? 0) + s.size
        return locked { copies[s.identity].flatMap { $0.size >= end ? $0 : nil } }
    }

    /// Where a range's bytes are now: its file, unless the file was started over since the
    /// range was cut (then logrotate's copy, if found), or nil.
    func source(of s: Segment) -> OwnedFD? {
        let end = (s.offset ?? 0) + s.size
        let current = locked { (epochs[s.identity] ?? 0) == s.followEpoch }
        if current, let fd = s.source, let st = try? Files.fstat(fd), UInt64(st.st_size) >= end { return fd }
        // Moved to a copy: its source is the copy, whatever the epoch of the file it came from.
        if s.moved, let fd = s.source { return fd }
        return copy(of: s)
    }

    /// A range that cannot be sent (its file no longer holds it): logged, counted, forgotten.
    func lost(_ s: Segment, why: String) {
        guard queue.forget(s.id, retry: { _ in false }) != nil else { return }
        logger.error("a range of a followed log file cannot be shipped", metadata: [
            "spool.name": "\(s.spool)", "segment.name": "\(s.name)", "reason": "\(why)", "bytes.lost.at.least": "\(s.size)"])
        stats.followLost(spool: s.spool, bytes: s.size)
    }

    /// A range whose checksum the collector did not match. Its bytes are read again: the same
    /// as cut (damaged on the way), it is offered again; changed (the file was truncated and
    /// written again, or rewritten, under it), it is sent from logrotate's copy if the copy
    /// holds the bytes as cut, and otherwise counted lost. Never sealed again with what the
    /// file holds now: those bytes are the file's new content, which the follower cuts anew.
    func sealAgain(_ s: Segment) {
        guard let offset = s.offset, queue.segment(s.id) != nil else { return }
        func crc(_ fd: OwnedFD) -> UInt32? {
            var c = CRC32()
            guard (try? Files.checksum(fd, from: Int64(offset), to: Int64(offset + s.size), into: &c)) != nil else { return nil }
            return c.value
        }
        if let fd = source(of: s), crc(fd) == s.crc {
            queue.offerFirst(s.id)
            return
        }
        if let copy = copyHolding(s), crc(copy.fd) == s.crc {
            var moved = s
            moved.source = copy.fd
            moved.dev = copy.id.dev; moved.ino = copy.id.ino; moved.birth = copy.id.birth
            moved.moved = true
            moved.followEpoch = locked { epochs[copy.id] ?? 0 }
            logger.notice("a range of a followed log file changed under it before it was sent; sending it from logrotate's copy", metadata: [
                "spool.name": "\(s.spool)", "segment.name": "\(s.name)"])
            guard queue.forget(s.id, retry: { _ in false }) != nil else { return }
            moved.id = ids.next()
            do { try queue.admit([moved], sync: true) } catch {
                logger.error("cannot write the agent state; the range is not shipped", metadata: [
                    "spool.name": "\(s.spool)", "segment.name": "\(s.name)", "error": "\(error)", "bytes.lost.at.least": "\(s.size)"])
                stats.followLost(spool: s.spool, bytes: s.size)
            }
            return
        }
        lost(s, why: "the file changed under this range (truncated and written again, or rewritten in place) before it was sent")
    }
}

extension FollowSurprise {
    var isTruncation: Bool {
        if case .truncated = self { return true }
        return false
    }
}
