import Foundation
import Glibc
import Logging
import SpoolshipCore
import SpoolshipIO
import SpoolshipDaemon

/// The blob watcher: the one thread that seals the files of blob spools. It watches the spool
/// directories with inotify (a daemon) or scans them once (`--once`), checks that each file
/// is complete (closed after writing, or renamed in, and left alone for the spool's settle
/// time), checksums it, and admits it to the segment queue. Anyone else who wants a name
/// sealed again (the session after a checksum mismatch or a changed file, the reaper after a
/// name was taken) asks with `requestSeal`: sealing never runs on their threads.
///
/// `@unchecked Sendable`: every stored `var` is read and written only while holding `lock`;
/// the `let`s are Sendable or thread-safe.
final class BlobSealer: @unchecked Sendable {
    private let config: AgentConfig
    private let queue: SegmentQueue
    private let dirs: SpoolDirectories
    private let ids: SegmentIDs
    private let leftBehind: LeftBehindFiles
    private let health: AgentHealth
    private let threads: AgentThreads
    private let logger: Logger
    private let stats: AgentStats
    /// The blob spools' settle times, by spool name.
    private let settleTimes: [String: Double]
    /// Called with a spool whose directory came back (the rotator forgets its streams).
    private let directoryBack: @Sendable (SpoolConfig) -> Void
    /// Opened once the spools are watched (or at once with `once`): then the agent is ready.
    let watching = Latch()

    private let lock = NSLock()
    // Under `lock`:
    /// Files closed after writing in a spool with a settle time, not left alone long enough
    /// yet, by `spool/name`.
    private var unsettled: [String: Unsettled] = [:]
    /// Names to seal again, asked for by other threads, by `spool/name`.
    private var requests: Set<String> = []
    /// Names the agent itself just renamed back into a spool (a shipped file still written
    /// to): their IN_MOVED_TO is not a producer's rename that makes them complete.
    private var putBacks: Set<String> = []
    /// Files sealed whose seal could not be recorded (a full state disk): sealed again every
    /// `sealLaterEvery` seconds until it can be.
    private var sealLater: Set<String> = []
    private var sealLaterSince: Double = 0
    /// With `once`: the first scan of the spools is still sealing files (on its own thread,
    /// while the first ones ship); the run is not over before it ends.
    private var scanning = false
    /// With `once`: files that were open for writing (or changed while being checksummed)
    /// when last looked at, by `spool/name`. A daemon seals them at their close event; a
    /// `once` run has no events, so its scanner looks at them again on every pass, and the
    /// run is not over (nor a success) while one is left.
    private var stillOpen: Set<String> = []
    /// The watcher's inotify, to wake it for a request.
    private var inotify: Inotify?

    static let sealLaterEvery = 2.0
    /// How many sealed files a scan hands over to the shipper at a time.
    static let admitBatch = 256

    /// A file waiting out its spool's settle time: when to look again (monotonic seconds), and
    /// its size and mtime when it was last looked at. Left alone means unchanged between two
    /// looks `settle` apart, on the monotonic clock: a skewed mtime cannot hold it up.
    struct Unsettled: Sendable {
        var due: Double
        var size: Int64
        var mtimeNs: Int64
    }

    init(config: AgentConfig, queue: SegmentQueue, dirs: SpoolDirectories, ids: SegmentIDs, leftBehind: LeftBehindFiles,
         health: AgentHealth, threads: AgentThreads, logger: Logger, stats: AgentStats,
         directoryBack: @escaping @Sendable (SpoolConfig) -> Void) {
        self.config = config
        self.queue = queue
        self.dirs = dirs
        self.ids = ids
        self.leftBehind = leftBehind
        self.health = health
        self.threads = threads
        self.logger = logger
        self.stats = stats
        self.directoryBack = directoryBack
        settleTimes = Dictionary(uniqueKeysWithValues: config.spools.compactMap { s in s.settle.map { (s.name, $0) } })
        threads.onStop { [self] in wake() }
    }

    private func locked<R>(_ body: () throws -> R) rethrows -> R {
        lock.lock()
        defer { lock.unlock() }
        return try body()
    }

    private func wake() { locked { inotify }?.wake() }

    /// Asks the watcher to seal `spool/name` again (from any thread).
    func requestSeal(spool: String, name: String) {
        locked { _ = requests.insert("\(spool)/\(name)") }
        wake()
    }

    /// The reaper renamed a shipped file back under `name`: its IN_MOVED_TO is not a
    /// producer's.
    func putBack(spool: String, name: String) {
        locked { _ = putBacks.insert("\(spool)/\(name)") }
    }

    /// Whether nothing waits here to be sealed (and, with `once`, the scan is over).
    var isIdle: Bool { locked { !scanning && unsettled.isEmpty && requests.isEmpty && stillOpen.isEmpty } }
    var isScanning: Bool { locked { scanning } }
    var unsettledCount: Int { locked { unsettled.count } }
    /// With `once`: the files still open for writing, for the message of a run that timed out.
    var stillOpenNames: [String] { locked { stillOpen.sorted() } }

    // MARK: threads

    /// `--once`: the scanner seals everything there is now, a batch at a time while the first
    /// ones ship, then what waits out its settle time or is asked for again, until the run ends
    /// (`finished`).
    func scanOnce(finished: @escaping @Sendable () -> Bool) {
        locked { scanning = true }
        watching.open()
        threads.spawn("scanner") { [self] in
            scanAll()
            // A scan cut short by a stop has not seen everything: `scanning` stays set, so
            // that the run does not report success.
            if !threads.isStopped { locked { scanning = false } }
            queue.progressed()
            queue.nudge()
            while !threads.isStopped && !finished() {
                threads.heartbeats.beat("scanner")
                threads.pause(min(0.5, max(0.01, nextSettled() - monotonicNow())))
                admit(sealSettled() + sealRequested() + sealStillOpen())
            }
        }
    }

    /// A daemon's watcher: watches every blob spool, then scans what is there already, then
    /// seals what each event says is complete. Every second it looks for spool directories
    /// that came back and forgets files left behind that are gone.
    func watch(onFailure: @escaping @Sendable (Error) -> Void) {
        threads.spawn("watcher") { [self] in
            do {
                try watchLoop()
            } catch {
                watching.open()
                onFailure(error)
            }
        }
    }

    private func watchLoop() throws {
        let ino = try Inotify()
        locked { inotify = ino }
        defer { locked { inotify = nil } }
        var byWatch: [Int32: SpoolConfig] = [:]
        for s in config.spools where s.logs == nil { byWatch[try ino.watch(s.directory)] = s }
        // Ready: what arrives from now on is seen. Then what is there already.
        watching.open()
        scanAll()
        var lastCheck = monotonicNow()
        while !threads.isStopped {
            threads.heartbeats.beat("watcher")
            let events = try ino.read(timeout: min(0.5, max(0.01, nextSettled() - monotonicNow())))
            if monotonicNow() - lastCheck >= 1 {
                lastCheck = monotonicNow()
                leftBehind.prune(dirs)
                for s in dirs.reopenReplaced(logger: logger) {
                    directoryBack(s)
                    if s.logs == nil {
                        byWatch[try ino.watch(s.directory)] = s
                        scan(s)
                    }
                }
            }
            var sealed: [Segment] = []
            for e in events {
                if e.overflow {
                    logger.warning("inotify queue overflowed; rescanning every spool")
                    scanAll()
                    continue
                }
                guard let spool = byWatch[e.watch] else { continue }
                if let s = handle(e, spool) { sealed.append(s) }
            }
            sealed += sealSettled()
            sealed += sealRequested()
            let again: [String] = locked {
                guard !sealLater.isEmpty, monotonicNow() - sealLaterSince >= Self.sealLaterEvery else { return [] }
                defer { sealLater.removeAll() }
                return sealLater.sorted()
            }
            sealed += again.compactMap(sealKey)
            admit(sealed)
        }
    }

    /// One inotify event of a blob spool: the file it names sealed, if it is complete.
    private func handle(_ e: Inotify.Event, _ spool: SpoolConfig) -> Segment? {
        if e.mask & UInt32(IN_DELETE_SELF | IN_MOVE_SELF) != 0 {
            logger.error("spool directory was removed or moved away; watching for it to come back", metadata: ["spool.name": "\(spool.name)", "path": "\(spool.directory)"])
            return nil
        }
        if e.rawName.isEmpty { return nil }
        guard let name = e.validName else {
            if !Self.inProgress(e.rawName) { leftBehind.leave(spool: spool.name, name: nil, raw: e.rawName, reason: "its name is not valid UTF-8") }
            return nil
        }
        var complete = e.mask & UInt32(IN_MOVED_TO) != 0
        // The agent's own rename back of a file still written to is no producer's.
        if complete && locked({ putBacks.remove("\(spool.name)/\(name)") != nil }) { complete = false }
        if e.mask & UInt32(IN_CREATE) != 0 {
            // Only what brings no other event: a hard link made into the spool (more than one
            // link: complete, as a rename), or what is not a regular file. A file being
            // created by open(2) waits for its close.
            guard let dir = dirs.spool(spool.name),
                  let st = try? Files.statAt(dir, name, label: name),
                  (st.st_mode & S_IFMT) != S_IFREG || st.st_nlink > 1 else { return nil }
            complete = true
        }
        return seal(spool: spool.name, name: name, renamedIn: complete)
    }

    // MARK: sealing

    /// Scans every blob spool and seals what is complete.
    private func scanAll() {
        for s in config.spools where s.logs == nil { scan(s) }
    }

    private func scan(_ spool: SpoolConfig) {
        var names: [(name: String, regular: Bool)] = []
        do {
            guard let dir = dirs.spool(spool.name) else { return }
            for e in try Files.entries(of: dir).sorted(by: { $0.rawName.lexicographicallyPrecedes($1.rawName) }) {
                if let n = e.name { names.append((n, e.type == UInt8(DT_REG))); continue }
                if !Self.inProgress(e.rawName) {
                    leftBehind.leave(spool: spool.name, name: nil, raw: e.rawName, reason: "its name is not valid UTF-8")
                }
            }
        } catch {
            logger.error("cannot list spool", metadata: ["spool.name": "\(spool.name)", "path": "\(spool.directory)", "error": "\(error)"])
            return
        }
        // Admitted a batch at a time, so that shipping starts while a large backlog is still
        // being sealed.
        var sealed: [Segment] = []
        for n in names {
            if threads.isStopped { return }
            if let s = seal(spool: spool.name, name: n.name, listedRegular: n.regular) { sealed.append(s) }
            if sealed.count >= Self.admitBatch { admit(sealed); sealed.removeAll() }
        }
        admit(sealed)
    }

    /// In progress, by the bytes of its name (Names.isInProgress: the ASCII prefix and suffix
    /// it looks at survive the decoding of bytes that are not UTF-8).
    static func inProgress(_ raw: [UInt8]) -> Bool {
        Names.isInProgress(String(decoding: raw, as: UTF8.self))
    }

    /// When the first file waiting out its spool's settle time is due (infinity: none waits).
    private func nextSettled() -> Double {
        locked { unsettled.values.map(\.due).min() ?? .infinity }
    }

    /// Seals the files whose settle time has passed (one written to meanwhile waits again).
    private func sealSettled() -> [Segment] {
        let now = monotonicNow()
        let due: [(String, Unsettled)] = locked {
            let d = unsettled.filter { $0.value.due <= now }
            for k in d.keys { unsettled[k] = nil }
            return d.sorted { $0.key < $1.key }
        }
        return due.compactMap { key, was in sealKey(key, settled: was) }
    }

    /// Seals the names other threads asked for.
    private func sealRequested() -> [Segment] {
        let asked: [String] = locked {
            defer { requests.removeAll() }
            return requests.sorted()
        }
        return asked.compactMap { sealKey($0) }
    }

    /// With `once`: looks again at the files that were open for writing (those still open go
    /// back in the set).
    private func sealStillOpen() -> [Segment] {
        let keys: [String] = locked {
            defer { stillOpen.removeAll() }
            return stillOpen.sorted()
        }
        return keys.compactMap { sealKey($0) }
    }

    private func sealKey(_ key: String) -> Segment? { sealKey(key, settled: nil) }

    private func sealKey(_ key: String, settled: Unsettled?) -> Segment? {
        guard let slash = key.firstIndex(of: "/") else { return nil }
        return seal(spool: String(key[..<slash]), name: String(key[key.index(after: slash)...]), settled: settled)
    }

    /// Seals one file: checks that it is a complete regular file with a shippable name, and
    /// computes its checksum. Returns nil for what is not (yet) to be shipped.
    /// `renamedIn`: the file was just renamed into the spool, which makes it complete whatever
    /// the spool's settle time.
    /// `settled`: what the file was when it was last looked at for its settle time.
    /// `listedRegular`: a scan's listing said the name is a regular file (`d_type`), so it is
    /// opened without looking at it first.
    private func seal(spool: String, name: String, renamedIn: Bool = false, settled: Unsettled? = nil, listedRegular: Bool = false) -> Segment? {
        if Names.isInProgress(name) { return nil }
        let key = "\(spool)/\(name)"
        if queue.holdsName(key) || leftBehind.isRefused(key) { return nil }
        guard let dir = dirs.spool(spool) else { return nil }
        do {
            try Names.validateSegmentName(name, what: "file name")
        } catch {
            leftBehind.leave(spool: spool, name: name, raw: Array(name.utf8), reason: "its name cannot be shipped: \(error)")
            return nil
        }
        let label = "\(config.spools.first { $0.name == spool }?.directory ?? spool)/\(name)"
        do {
            // What it is, before opening it: a socket cannot be opened at all, a device is not
            // opened for fear of what opening it does, and a symlink is not followed. Where the
            // listing said so, it is a regular file; should the name have changed into
            // something else since, the open does not block (O_NONBLOCK), the fstat below
            // turns it away, and its own event or the next scan looks at it.
            if !listedRegular {
                guard let lst = try Files.statAt(dir, name, label: label) else { return nil }
                if let what = Self.notARegularFile(lst) {
                    leftBehind.leave(spool: spool, name: name, raw: Array(name.utf8), reason: "it is \(what), not a regular file")
                    return nil
                }
            }
            // O_NONBLOCK and O_NOCTTY: a name that became a FIFO or a terminal since the listing
            // neither blocks the open nor becomes the agent's controlling terminal.
            let fd = try Files.openBeneath(dir, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY, label: label)
            let st = try Files.fstat(fd)
            guard (st.st_mode & S_IFMT) == S_IFREG else { return nil }
            // Complete means closed after writing: a file that a producer still holds open for
            // writing (seen by a scan, or closed by one of two writers) waits for its last close.
            if Files.hasWriters(fd) == true {
                if config.once { locked { _ = stillOpen.insert(key) } }
                return nil
            }
            if let settle = settleTimes[spool], !renamedIn {
                // Complete once unchanged across a whole settle time: looked at again then.
                let now = Unsettled(due: monotonicNow() + settle, size: Int64(st.st_size), mtimeNs: mtimeNanoseconds(st))
                if let was = settled, was.size == now.size, was.mtimeNs == now.mtimeNs {
                    // Left alone: complete.
                } else {
                    locked {
                        // Another event while it waits: the wait starts over only if it changed.
                        if let w = unsettled[key], w.size == now.size, w.mtimeNs == now.mtimeNs { return }
                        unsettled[key] = now
                    }
                    return nil
                }
            }
            let crc = try Files.checksum(fd, size: Int64(st.st_size), progress: threads.workProgress)
            let after = try Files.fstat(fd)
            guard after.st_size == st.st_size, mtimeNanoseconds(after) == mtimeNanoseconds(st) else {
                // Still being written: its close will bring another event (a `once` run looks
                // again).
                if config.once { locked { _ = stillOpen.insert(key) } }
                return nil
            }
            leftBehind.sealed(key)
            return Segment(id: ids.next(), spool: spool, name: name, kind: .blob, dev: UInt64(st.st_dev), ino: UInt64(st.st_ino),
                           size: UInt64(st.st_size), crc: crc, mtimeNs: mtimeNanoseconds(st), sealedAt: Date().timeIntervalSince1970)
        } catch let e as SyscallError where e.errno == ENOENT || (listedRegular && e.errno == ENXIO) {
            // Gone, or (ENXIO) a socket took the name since the listing: its event says so.
            return nil
        } catch is StoppedWork {
            return nil
        } catch let e as SyscallError where e.errno == ELOOP || e.errno == EXDEV {
            leftBehind.leave(spool: spool, name: name, raw: Array(name.utf8), reason: "it is a symbolic link, not a regular file (links are not followed)")
            return nil
        } catch let e as SyscallError where e.errno == EACCES || e.errno == EPERM {
            // Tried again at its next event or scan: the permissions may be fixed.
            leftBehind.leave(spool: spool, name: name, raw: Array(name.utf8), reason: "the agent may not read it (\(e))", retry: true)
            return nil
        } catch {
            logger.error("cannot seal file", metadata: ["spool.name": "\(spool)", "segment.name": "\(name)", "error": "\(error)"])
            stats.error(.seal)
            health.update { $0.incomplete = "could not seal \(spool)/\(name): \(error)" }
            return nil
        }
    }

    /// Records sealed segments in the journal and queues them for shipping; when the journal
    /// cannot be written, they are sealed again a little later, events or not (a full state
    /// disk that is freed brings no event for the files that waited).
    private func admit(_ sealed: [Segment]) {
        guard !sealed.isEmpty else { return }
        do {
            try queue.admit(sealed)
        } catch {
            logger.error("cannot write the agent state; will seal again later", metadata: ["error": "\(error)"])
            stats.error(.seal)
            health.update { $0.incomplete = "could not record \(sealed.count) sealed file(s) in the agent state: \(error)" }
            locked {
                for s in sealed { sealLater.insert("\(s.spool)/\(s.name)") }
                sealLaterSince = monotonicNow()
            }
        }
    }

    /// "a FIFO", "a socket", ... for what is not a regular file; nil for a regular file.
    static func notARegularFile(_ st: stat) -> String? {
        switch st.st_mode & S_IFMT {
        case S_IFREG: return nil
        case S_IFLNK: return "a symbolic link"
        case S_IFIFO: return "a FIFO (named pipe)"
        case S_IFSOCK: return "a socket"
        case S_IFCHR: return "a character device"
        case S_IFBLK: return "a block device"
        case S_IFDIR: return "a directory (subdirectories of a spool are not shipped)"
        default: return "of an unknown file type"
        }
    }
}
