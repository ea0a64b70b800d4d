import Foundation
import Glibc
import Logging
import SpoolshipCore
import SpoolshipIO
import SpoolshipDaemon

/// How the producers of a log spool learn to reopen the path after a rotation.
public enum ReopenMethod: Sendable, Equatable, CustomStringConvertible {
    /// They notice on their own (they reopen by path on every write, or when the path's inode
    /// changes): nothing to do.
    case path
    /// Send `signal` to the pid read from `pidFile` (what nginx, rsyslog and most daemons take).
    case signal(pidFile: String, signal: Int32)
    /// Run a shell command, as logrotate's postrotate does.
    case command(String)

    public var description: String {
        switch self {
        case .path: return "path"
        case .signal(let f, let s): return "signal \(s) to the pid in \(f)"
        case .command(let c): return "command '\(c)'"
        }
    }
}

/// The settings of a log spool.
public struct LogSettings: Sendable, Equatable {
    public var glob = LogNames.defaultGlob
    /// Rotate an active file once it holds this many bytes...
    public var rotateSize: UInt64 = 64 << 20
    /// ...or once its first byte not yet rotated is this many seconds old.
    public var rotateAge: Double = 60
    /// gzip each segment when it is sealed (zlib level), or nil for none.
    public var compressLevel: Int32?
    public var reopen: ReopenMethod = .path
    /// A reopen command still running after this long is killed.
    public var reopenTimeout: Double = 30
    public init() {}
}

public struct SpoolConfig: Sendable, Equatable {
    public var name: String
    public var directory: String
    /// nil for a blob spool.
    public var logs: LogSettings?
    /// A blob spool's settle time, in seconds: a file closed after writing is complete only
    /// once it has been left alone (no write, so an unchanged mtime) for this long. nil: at
    /// its close. A file renamed into the spool is complete at once either way.
    public var settle: Double?
    public init(name: String, directory: String, logs: LogSettings? = nil, settle: Double? = nil) {
        self.name = name
        self.directory = directory
        self.logs = logs
        self.settle = settle
    }
}

public struct AgentConfig: Sendable, Equatable {
    public var collector: Endpoint
    public var agentID: String
    public var stateDir: String
    public var spools: [SpoolConfig]
    /// Keep acknowledged files here (`<archive-dir>/<spool>/<name>`) instead of deleting them.
    public var archiveDir: String?
    public var once = false
    /// With `once`: give up after this many seconds without progress.
    public var timeout: Double = 300
    /// A connection on which the collector says nothing for this long, while something is
    /// outstanding, is taken for dead. Pings go out at a third of it when idle.
    public var ioTimeout: Double = 30
    public var connectTimeout: Double = 10
    /// This agent's secret (`--secret-file`); nil to connect without credentials.
    public var secret: [UInt8]?
    public var backoffMin: Double = 0.1
    public var backoffMax: Double = 30

    public init(collector: Endpoint, agentID: String, stateDir: String, spools: [SpoolConfig]) {
        self.collector = collector
        self.agentID = agentID
        self.stateDir = stateDir
        self.spools = spools
    }
}

/// Long work (a checksum, a compression) given up because the agent is stopping.
struct StoppedWork: Error {}

struct FatalRefusal: Error, CustomStringConvertible {
    var description: String
}

/// The agent: watches spools, seals complete files, ships them over one long-lived connection
/// with pipelined offers and sendfile, and deletes (or archives) each only after the
/// collector acknowledged it as committed.
public final class Agent: @unchecked Sendable {
    public let config: AgentConfig
    let logger: Logger
    /// The process's figures (kept across reloads): status and metrics read them.
    public let stats: AgentStats
    let journal: AgentJournal
    let archiveDirs: [String: OwnedFD]
    let state = NSCondition()
    // Under `state`:
    /// Each spool's directory, and each log spool's rotated directory (`DIR/.spoolship`).
    /// Replaced when a spool directory is removed and made again.
    var spoolDirs: [String: OwnedFD]
    var rotatedDirs: [String: OwnedFD] = [:]
    /// The sealer's watch on the rotated directories; the rotator wakes it through this once
    /// a rotation is recorded (the rename's own event comes before that, and would find
    /// nothing to seal yet).
    var sealerWatch: Inotify?
    /// Log spools: each stream's active file as last seen, by `spool/stream`.
    var streams: [String: StreamState] = [:]
    /// Log spools: the last sequence number given to each stream, by `spool/stream`.
    var lastSeq: [String: UInt64] = [:]
    /// Log spools: rotated files not sealed yet, by id (the id their segment takes).
    var rotations: [UInt64: Rotation] = [:]
    /// Log spools whose producers must be told to reopen once running (a rotation was
    /// finished at start).
    var reopenAfterRecovery: Set<String> = []
    /// Spools whose directory is gone (reported once). Watcher thread only.
    var missingDirs: Set<String> = []
    var segments: [UInt64: Segment] = [:]
    var nextID: UInt64 = 1
    /// Segment ids waiting to be offered, in seal order.
    var toOffer: [UInt64] = []
    /// (spool, name) of every live segment, so a second event for a file does not seal it twice.
    var byName: [String: UInt64] = [:]
    var stopped = false
    /// Why the run cannot finish as asked: files that could not be sealed or recorded (a
    /// `--once` run must not report success), or a failed spool watcher.
    var incomplete: String?
    var fatal: String?
    var lastProgress = monotonicNow()
    /// With `once`: the first scan of the spools is still sealing files (on its own thread,
    /// while the first ones ship); the run is not over before it ends.
    var scanning = false
    var lastError: String?
    /// Acknowledged segments waiting for the reaper.
    var reapQueue: [Segment] = []
    /// Acknowledged segments whose ack record is already synced (a retry must not append it
    /// again).
    var ackJournaled: Set<UInt64> = []
    /// Names whose inotify event came while a live segment still held the name (a producer
    /// replaced the file): sealed again as soon as that segment is finished with.
    var skippedEvents: Set<String> = []
    /// Files closed after writing in a spool with a settle time, not left alone long enough
    /// yet: when to look at them again (monotonic seconds), by `spool/name`.
    var unsettled: [String: Unsettled] = [:]
    /// A file waiting out its spool's settle time: when to look again (monotonic seconds), and
    /// its size and mtime when it was last looked at. Left alone means unchanged between two
    /// looks `settle` apart, on the monotonic clock: a skewed mtime cannot hold it up.
    struct Unsettled: Sendable {
        var due: Double
        var size: Int64
        var mtimeNs: Int64
    }
    /// Names the agent itself just renamed back into a spool (a shipped file still written
    /// to): their IN_MOVED_TO is not a producer's rename that makes them complete.
    var putBack: Set<String> = []
    /// The last connection ended with ERROR 10 (agent id in use): wait at least 5 s.
    var lastIDInUse = false
    /// Files sealed whose seal could not be recorded (a full state disk): sealed again by the
    /// watcher every `sealLaterEvery` seconds until it can be.
    var sealLater: Set<String> = []
    var sealLaterSince: Double = 0
    static let sealLaterEvery = 2.0
    /// Files of the spools that will not ship, by `spool/name` (see `leaveBehind`).
    var unshippable: [String: LeftBehind] = [:]
    /// The blob spools' settle times, by spool name.
    let settleTimes: [String: Double]
    var reaperIdle = false
    /// Files that could not be shipped (bad name, too large): kept, not retried until restart.
    var refused: Set<String> = []
    public private(set) var shippedSegments = 0
    public private(set) var shippedBytes: UInt64 = 0
    /// The collector's id while a connection is set up (for the status line).
    var connectedTo: String?
    /// Since when (wall clock) the connection is set up, and when the last error came.
    var connectedSince: Double?
    var lastErrorTime: Double?
    /// When this agent started (wall clock).
    let startedAt = Date().timeIntervalSince1970
    /// The connection's socket, which a stop shuts down.
    var currentSocket: Socket?
    /// Segments the collector had no room for, with when to offer each again, and the wait
    /// that doubles at each refusal (1 s to 30 s).
    var deferred: [UInt64: (until: Double, wait: Double)] = [:]
    var heartbeats: Heartbeats { Heartbeats.shared }
    /// Threads of this agent still running (under `state`): a stop waits for them, so that
    /// a new agent in the same process (a reload) never shares the state dir with them.
    var liveThreads = 0
    /// Opened once the spools are watched (or at once with `once`): then the agent is ready.
    let watching = Latch()

    public init(config: AgentConfig, logger: Logger, stats: AgentStats = AgentStats()) throws {
        self.config = config
        self.logger = logger
        self.stats = stats
        settleTimes = Dictionary(uniqueKeysWithValues: config.spools.compactMap { s in s.settle.map { (s.name, $0) } })
        stats.register(spools: config.spools.map(\.name))
        try Names.validateIdentifier(config.agentID, what: "agent id")
        var dirs: [String: OwnedFD] = [:]
        var rotated: [String: OwnedFD] = [:]
        var archives: [String: OwnedFD] = [:]
        var seenDirs: [String: String] = [:]
        for s in config.spools {
            try Names.validateIdentifier(s.name, what: "spool name")
            guard dirs[s.name] == nil else { throw DaemonError("spool \(s.name) is configured twice") }
            do {
                dirs[s.name] = try Files.openDirectory(s.directory)
            } catch {
                throw DaemonError("spool \(s.name): cannot open its directory \(s.directory): \(error)")
            }
            let dst = try Files.fstat(dirs[s.name]!)
            let identity = "\(dst.st_dev):\(dst.st_ino)"
            if let other = seenDirs[identity] {
                throw DaemonError("spools \(other) and \(s.name) watch the same directory \(s.directory); give each spool its own")
            }
            seenDirs[identity] = s.name
            if let logs = s.logs {
                try LogNames.validateGlob(logs.glob)
                do {
                    rotated[s.name] = try Files.ensureDirectory(dirs[s.name]!, LogNames.rotatedDirName, label: "\(s.directory)/\(LogNames.rotatedDirName)", mode: 0o700)
                } catch {
                    throw DaemonError("log spool \(s.name): cannot make its directory of rotated files: \(error)")
                }
            }
            if let a = config.archiveDir {
                try Files.makeDirectories("\(a)/\(s.name)")
                let afd = try Files.openDirectory("\(a)/\(s.name)")
                let st1 = try Files.fstat(afd), st2 = try Files.fstat(dirs[s.name]!)
                guard st1.st_dev == st2.st_dev else {
                    throw DaemonError("archive dir \(a)/\(s.name) is on another file system than spool \(s.name) (\(s.directory)); acknowledged files are renamed there, so it must be on the same one")
                }
                archives[s.name] = afd
            }
        }
        spoolDirs = dirs
        rotatedDirs = rotated
        archiveDirs = archives
        journal = try AgentJournal(dir: config.stateDir, logger: logger)
        let loaded = try journal.load(logger: logger)
        segments = loaded.segments
        rotations = loaded.rotations
        lastSeq = loaded.lastSeq
        nextID = loaded.nextID
        try recover()
    }

    /// Checks a configuration's spools without starting anything: each directory can be
    /// opened, no directory is configured twice, names and globs are valid. A reload runs it
    /// before it stops the running agent.
    public static func preflight(_ config: AgentConfig) throws {
        try Names.validateIdentifier(config.agentID, what: "agent id")
        var seen: [String: String] = [:]
        for s in config.spools {
            try Names.validateIdentifier(s.name, what: "spool name")
            if let l = s.logs { try LogNames.validateGlob(l.glob) }
            let fd: OwnedFD
            do { fd = try Files.openDirectory(s.directory) } catch {
                throw DaemonError("spool \(s.name): cannot open its directory \(s.directory): \(error)")
            }
            let st = try Files.fstat(fd)
            if let other = seen["\(st.st_dev):\(st.st_ino)"] {
                throw DaemonError("spools \(other) and \(s.name) watch the same directory \(s.directory); give each spool its own")
            }
            seen["\(st.st_dev):\(st.st_ino)"] = s.name
        }
    }

    /// The directory that holds a segment's file: the spool's own for blobs, the rotated
    /// directory for log segments.
    func directory(for s: Segment) -> OwnedFD? {
        state.withLock { s.kind == .log ? rotatedDirs[s.spool] : spoolDirs[s.spool] }
    }

    func spoolConfig(_ name: String) -> SpoolConfig? { config.spools.first { $0.name == name } }

    // MARK: start-up recovery (R4)

    /// Acknowledged-and-present is deleted again; acknowledged-and-missing is done; a sealed
    /// segment whose file changed or vanished is dropped (and re-sealed by the scan if present).
    private func recover() throws {
        // Acknowledged before the last stop: their acks are journaled; finish removing them.
        // A file that cannot be removed now is retried by the reaper, never a failed start.
        let acked = segments.values.filter { $0.acked }.sorted { $0.id < $1.id }
        if !acked.isEmpty {
            let failed = finish(acked)
            ackJournaled.formUnion(failed.map(\.id))
            reapQueue += failed
        }
        for (id, s) in segments where !s.acked {
            guard let dir = s.kind == .log ? rotatedDirs[s.spool] : spoolDirs[s.spool] else {
                logger.warning("segment of a spool no longer configured; forgetting it", metadata: ["spool.name": "\(s.spool)", "segment.name": "\(s.name)"])
                segments[id] = nil
                continue
            }
            let st = try? Files.statAt(dir, s.name, label: s.name)
            if let st = st, UInt64(st.st_dev) == s.dev, UInt64(st.st_ino) == s.ino, UInt64(st.st_size) == s.size, mtimeNs(st) == s.mtimeNs {
                byName["\(s.spool)/\(s.name)"] = id
            } else {
                segments[id] = nil
            }
        }
        toOffer = segments.keys.sorted()
        for (id, r) in rotations where spoolConfig(r.spool)?.logs == nil {
            logger.warning("rotated file of a log spool no longer configured; forgetting it (it stays on disk)", metadata: ["spool.name": "\(r.spool)", "segment.name": "\(r.rawName)"])
            try journal.append([StateRecord(op: .done, id: id)], sync: false)
            rotations[id] = nil
        }
        try recoverRotations()
        do {
            try journal.compact(Array(segments.values), rotations: Array(rotations.values), lastSeq: lastSeq)
        } catch {
            // Not needed to start: the journal as it is holds the same state, only longer.
            // Appends may fail as well while the disk is full; each is retried.
            logger.error("cannot rewrite the agent state journal at start; going on with it as it is (is its file system full? free some space there)",
                         metadata: ["path": "\(config.stateDir)/\(AgentJournal.fileName)", "error": "\(error)"])
        }
    }

    // MARK: sealing

    func mtimeNs(_ st: stat) -> Int64 { Int64(st.st_mtim.tv_sec) * 1_000_000_000 + Int64(st.st_mtim.tv_nsec) }

    /// Scans every spool and seals what is complete.
    func scanAll() {
        for s in config.spools where s.logs == nil { scan(s) }
    }

    func scan(_ spool: SpoolConfig) {
        var names: [String] = []
        do {
            for e in try Files.entries(spool.directory).sorted(by: { $0.rawName.lexicographicallyPrecedes($1.rawName) }) {
                if let n = e.name { names.append(n); continue }
                if !Self.inProgress(e.rawName) {
                    leaveBehind(spool: spool.name, name: nil, raw: e.rawName, reason: "its name is not valid UTF-8")
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
            if isStopped { return }
            if let s = seal(spool: spool.name, name: n) { sealed.append(s) }
            if sealed.count >= Self.admitBatch { admit(sealed); sealed.removeAll() }
        }
        admit(sealed)
    }

    /// How many sealed files a scan hands over to the shipper at a time.
    static let admitBatch = 256

    /// In progress, by the bytes of its name (Names.isInProgress: the ASCII prefix and suffix
    /// it looks at survive the decoding of bytes that are not UTF-8).
    static func inProgress(_ raw: [UInt8]) -> Bool {
        Names.isInProgress(String(decoding: raw, as: UTF8.self))
    }

    /// Seals one file: checks that it is a complete regular file with a shippable name, and
    /// computes its checksum. Returns nil for what is not (yet) to be shipped.
    /// `renamedIn`: the file was just renamed into the spool, which makes it complete whatever
    /// the spool's settle time.
    /// `settled`: what the file was when it was last looked at for its settle time.
    func seal(spool: String, name: String, renamedIn: Bool = false, settled: Unsettled? = nil) -> Segment? {
        if Names.isInProgress(name) { return nil }
        let key = "\(spool)/\(name)"
        let known: Bool = state.withLock {
            if byName[key] != nil {
                skippedEvents.insert(key)
                return true
            }
            return refused.contains(key)
        }
        if known { return nil }
        guard let dir = state.withLock({ spoolDirs[spool] }) else { return nil }
        do {
            try Names.validateSegmentName(name, what: "file name")
        } catch {
            leaveBehind(spool: spool, name: name, raw: Array(name.utf8), reason: "its name cannot be shipped: \(error)")
            return nil
        }
        let label = "\(config.spools.first { $0.name == spool }?.directory ?? spool)/\(name)"
        do {
            // What it is, before opening it: a FIFO would block an open for reading, a socket
            // cannot be opened at all, and a symlink is not followed.
            guard let lst = try Files.statAt(dir, name, label: label) else { return nil }
            if let what = Self.notARegularFile(lst) {
                leaveBehind(spool: spool, name: name, raw: Array(name.utf8), reason: "it is \(what), not a regular file")
                return nil
            }
            let fd = try Files.openBeneath(dir, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK, label: label)
            let st = try Files.fstat(fd)
            guard (st.st_mode & S_IFMT) == S_IFREG else { return nil }
            // Complete means closed after writing: a file that a producer still holds open for
            // writing (seen by a scan, or closed by one of two writers) waits for its last close.
            if Files.hasWriters(fd) == true { return nil }
            if let settle = settleTimes[spool], !renamedIn {
                // Complete once unchanged across a whole settle time: looked at again then.
                let now = Unsettled(due: monotonicNow() + settle, size: Int64(st.st_size), mtimeNs: mtimeNs(st))
                if let was = settled, was.size == now.size, was.mtimeNs == now.mtimeNs {
                    // Left alone: complete.
                } else {
                    state.withLock {
                        // Another event while it waits: the wait starts over only if it changed.
                        if let w = unsettled[key], w.size == now.size, w.mtimeNs == now.mtimeNs { return }
                        unsettled[key] = now
                    }
                    return nil
                }
            }
            let crc = try Files.checksum(fd, size: Int64(st.st_size), progress: workProgress)
            let after = try Files.fstat(fd)
            guard after.st_size == st.st_size, mtimeNs(after) == mtimeNs(st) else {
                // Still being written: its close will bring another event.
                return nil
            }
            return state.withLock { () -> Segment in
                unshippable[key] = nil
                let s = Segment(id: nextID, spool: spool, name: name, kind: .blob, dev: UInt64(st.st_dev), ino: UInt64(st.st_ino),
                                size: UInt64(st.st_size), crc: crc, mtimeNs: mtimeNs(st), sealedAt: Date().timeIntervalSince1970)
                nextID += 1
                return s
            }
        } catch let e as SyscallError where e.errno == ENOENT {
            return nil
        } catch is StoppedWork {
            return nil
        } catch let e as SyscallError where e.errno == ELOOP || e.errno == EXDEV {
            leaveBehind(spool: spool, name: name, raw: Array(name.utf8), reason: "it is a symbolic link, not a regular file (links are not followed)")
            return nil
        } catch let e as SyscallError where e.errno == EACCES || e.errno == EPERM {
            // Tried again at its next event or scan: the permissions may be fixed.
            leaveBehind(spool: spool, name: name, raw: Array(name.utf8), reason: "the agent may not read it (\(e))", retry: true)
            return nil
        } catch {
            logger.error("cannot seal file", metadata: ["spool.name": "\(spool)", "segment.name": "\(name)", "error": "\(error)"])
            stats.error(.seal)
            state.withLock { incomplete = "could not seal \(spool)/\(name): \(error)" }
            return nil
        }
    }

    /// A file in a spool that the agent will not ship: why, and its name as bytes (a name that
    /// is not valid UTF-8 has no String of its own).
    struct LeftBehind: Sendable {
        var spool: String
        var raw: [UInt8]
        var display: String
        var reason: String
        /// In a log spool's directory of rotated files, not in the spool's own.
        var rotated = false
    }

    /// Records a file of a spool that will not ship: named once in the log (error), counted
    /// in `spoolship status` and the metrics, and a reason for `--once` to fail. Not tried
    /// again until the agent restarts, unless `retry` (its next event or scan tries again).
    /// Forgotten once the file is gone (`pruneLeftBehind`).
    func leaveBehind(spool: String, name: String?, raw: [UInt8], reason: String, retry: Bool = false) {
        let display = FileName.display(raw)
        let key = "\(spool)/\(name ?? display)"
        let first: Bool = state.withLock {
            if !retry { refused.insert(key) }
            if unshippable[key]?.reason == reason { return false }
            unshippable[key] = LeftBehind(spool: spool, raw: raw, display: display, reason: reason)
            return true
        }
        guard first else { return }
        stats.error(.unshippable)
        logger.error("file cannot be shipped; leaving it in place", metadata: [
            "spool.name": "\(spool)", "segment.name": .stringConvertible(EscapedText(display)), "reason": "\(reason)"])
    }

    /// Forgets the files left behind that are no longer there (removed or renamed by someone).
    func pruneLeftBehind() {
        let entries = state.withLock { unshippable }
        for (key, e) in entries {
            guard let dir = state.withLock({ e.rotated ? rotatedDirs[e.spool] : spoolDirs[e.spool] }) else { continue }
            if (try? Files.statAt(dir, rawName: e.raw)) ?? nil == nil {
                state.withLock {
                    unshippable[key] = nil
                    _ = refused.remove(key)
                }
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

    /// Records sealed segments in the journal and queues them for shipping.
    func admit(_ sealed: [Segment]) {
        guard !sealed.isEmpty else { return }
        state.lock()
        defer { state.unlock() }
        // One segment a name: a name sealed twice in one batch (a rescan and a skipped event
        // for the same file) would be offered twice under one key, and the collector keeps
        // only the later offer.
        var latest: [String: Segment] = [:]
        for s in sealed where byName["\(s.spool)/\(s.name)"] == nil { latest["\(s.spool)/\(s.name)"] = s }
        let fresh = latest.values.sorted { $0.id < $1.id }
        do {
            try journal.append(fresh.map { $0.sealRecord }, sync: false)
        } catch {
            logger.error("cannot write the agent state; will seal again later", metadata: ["error": "\(error)"])
            stats.error(.seal)
            incomplete = "could not record \(fresh.count) sealed file(s) in the agent state: \(error)"
            // Sealed again by the watcher a little later, events or not (a full state disk
            // that is freed brings no event for the files that waited).
            for s in fresh { sealLater.insert("\(s.spool)/\(s.name)") }
            sealLaterSince = monotonicNow()
            return
        }
        for s in fresh {
            segments[s.id] = s
            byName["\(s.spool)/\(s.name)"] = s.id
            toOffer.append(s.id)
            logger.debug("sealed", metadata: ["spool.name": "\(s.spool)", "segment.name": "\(s.name)", "bytes": "\(s.size)", "crc": "\(hex32(s.crc))"])
        }
        state.broadcast()
    }

    // MARK: acknowledgements (R4)

    /// Called by a connection's reader with segments the collector acknowledged as committed.
    /// They are marked acknowledged in memory at once (never offered again) and handed to the
    /// reaper, so that the reader goes straight back to reading.
    func acknowledged(_ ids: [(UInt64, String)]) {
        state.lock()
        defer { state.unlock() }
        for (id, stored) in ids {
            guard var s = segments[id], !s.acked else { continue }
            deferred[id] = nil
            s.acked = true
            s.stored = stored
            segments[id] = s
            reapQueue.append(s)
            stats.acknowledged(spool: s.spool, bytes: s.size)
        }
        lastProgress = monotonicNow()
        state.broadcast()
    }

    /// The reaper: for each batch of acknowledged segments, record the acks durably, then
    /// delete or archive the files and sync their directories, then record them done (R4).
    /// A file that cannot be removed is logged and retried a little later, alone: it never
    /// holds up the others.
    private func reapLoop() {
        while true {
            state.lock()
            while reapQueue.isEmpty && !stopped {
                heartbeats.beat("reaper")
                _ = state.wait(until: Date(timeIntervalSinceNow: 1))
            }
            heartbeats.beat("reaper")
            if reapQueue.isEmpty { reaperIdle = true; state.broadcast(); state.unlock(); return }
            let batch = reapQueue
            reapQueue.removeAll()
            let unjournaled = batch.filter { !ackJournaled.contains($0.id) }
            state.unlock()
            do {
                try journal.append(unjournaled.map { var r = StateRecord(op: .ack, id: $0.id); r.stored = $0.stored; return r }, sync: true)
            } catch {
                // Still acknowledged in memory, so never offered again; retry shortly.
                logger.error("cannot record acknowledgements; retrying", metadata: ["error": "\(error)"])
                state.lock()
                reapQueue = batch + reapQueue
                _ = state.wait(until: Date(timeIntervalSinceNow: 1))
                state.unlock()
                continue
            }
            state.withLock { ackJournaled.formUnion(unjournaled.map(\.id)) }
            let failed = finish(batch)
            if !failed.isEmpty {
                state.lock()
                if stopped {
                    // Stopping: what cannot be removed now is removed at the next start.
                    reaperIdle = true
                    state.broadcast()
                    state.unlock()
                    return
                }
                reapQueue += failed
                _ = state.wait(until: Date(timeIntervalSinceNow: 5))
                state.unlock()
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
        for start in stride(from: 0, to: batch.count, by: Self.removalChunk) {
            var held: [Aside] = []
            for s in batch[start..<min(start + Self.removalChunk, batch.count)] {
                do {
                    switch try moveAside(s, touched: &touched, rescan: &rescan) {
                    case .done: removed.append(s)
                    case .retry: failed.append(s)
                    case .moved(let a): held.append(a)
                    }
                } catch {
                    cannotRemove(s, error)
                }
            }
            // An open(2) that found one of these files by its name just before the move takes
            // its write access, which breaks the lease, within microseconds; the grace covers a
            // producer that the scheduler holds up in between, unless for longer than it.
            if !held.isEmpty { usleep(UInt32(Self.removalGrace * 1_000_000)) }
            for a in held {
                do {
                    try removeAside(a, rescan: &rescan)
                    removed.append(a.segment)
                } catch {
                    cannotRemove(a.segment, error)
                }
                Files.releaseLease(a.fd)
            }
        }
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
        state.lock()
        do {
            try journal.append(synced.map { StateRecord(op: .done, id: $0.id) }, sync: false)
        } catch {
            logger.error("cannot record removed files as done; the next start checks them again", metadata: ["error": "\(error)"])
        }
        for s in synced {
            segments[s.id] = nil
            ackJournaled.remove(s.id)
            let key = "\(s.spool)/\(s.name)"
            if byName[key] == s.id {
                byName[key] = nil
                if skippedEvents.remove(key) != nil { rescan.append((s.spool, s.name)) }
            }
            shippedSegments += 1
            shippedBytes += s.size
        }
        if journal.appended > 100_000 && journal.appended > 4 * (segments.count + rotations.count + lastSeq.count) {
            do { try journal.compact(Array(segments.values), rotations: Array(rotations.values), lastSeq: lastSeq) } catch {
                logger.error("cannot compact the agent state", metadata: ["error": "\(error)"])
            }
        }
        state.broadcast()
        state.unlock()
        // Files that took the name meanwhile are new segments.
        admit(rescan.compactMap { seal(spool: $0.0, name: $0.1) })
        return failed
    }

    /// The least wait before connecting again after ERROR 10 (agent id in use).
    static let idInUseBackoff = 5.0

    /// How long files moved aside wait before the agent looks at them again and removes them
    /// (see `moveAside`), and how many are held at once (each holds a descriptor).
    static let removalGrace = 0.1
    static let removalChunk = 1024

    /// An acknowledged file moved aside, held open (with a read lease where the kernel gives
    /// one) from before the move until its removal.
    private struct Aside {
        var segment: Segment
        var dir: OwnedFD
        var fd: OwnedFD
        var lease: Files.ReadLease
    }

    private enum MoveAside {
        case done, retry
        case moved(Aside)
    }

    /// Removes acknowledged files, never another file that took the name, and never a file
    /// that changed since it was sealed or that a process holds open for writing. In two steps,
    /// a batch at a time (`finish`):
    ///
    /// 1. `moveAside`: if the name holds the sealed file (device, inode, size, mtime), open it,
    ///    take a read lease (the kernel gives one only while no one has the file open for
    ///    writing, and any later open for writing breaks it), and rename it aside to a private
    ///    dotfile name (`.spoolship-reap-<id>`, ignored by scans), without replacing. A file
    ///    held open for writing, or grown or rewritten since its seal, is left where it is: it
    ///    is sealed again and ships whole as the next version once closed.
    /// 2. `removeAside`, once `removalGrace` has passed: from the move on no one can open it by
    ///    its name, and an open(2) that found it by its name just before the move has got its
    ///    write access by now (unless the scheduler held that producer up for longer). If the
    ///    aside name holds the sealed file, unchanged, and the lease is whole (where no lease
    ///    could be had: no writer in /proc), unlink it (or rename it into the archive dir). Otherwise put it back, under its name or as
    ///    `name~N` if the name is taken again, and seal it again: a new file that replaced the
    ///    name just before the move, or the shipped file being written, which ships again.
    ///
    /// Without the lease and the wait, a producer that appends in place and had just opened
    /// the file would write into an unlinked file, lost. A crash between the steps leaves the
    /// aside name, which the next start finishes.
    private func moveAside(_ s: Segment, touched: inout [String: OwnedFD], rescan: inout [(String, String)]) throws -> MoveAside {
        guard let dir = directory(for: s) else { return .done }
        // The directory is synced whatever happens below: a retry after a failed directory
        // sync finds the file already gone, and must still sync before recording it done.
        touched[s.kind == .log ? "rotated/\(s.spool)" : s.spool] = dir
        if let adir = archiveDirs[s.spool] { touched["archive/\(s.spool)"] = adir }
        let label = "\(s.spool)/\(s.name)"
        let aside = ".spoolship-reap-\(s.id)"
        let asideLabel = "\(s.spool)/\(aside)"
        func open(_ name: String, _ label: String) throws -> OwnedFD? {
            do {
                return try Files.openBeneath(dir, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK, label: label)
            } catch let e as SyscallError where e.errno == ENOENT {
                return nil
            }
        }
        if try Files.statAt(dir, aside, label: asideLabel) != nil {
            // Moved aside before a crash: held now, and looked at with the rest.
            guard let fd = try open(aside, asideLabel) else { return .done }
            return .moved(Aside(segment: s, dir: dir, fd: fd, lease: Files.takeReadLease(fd)))
        }
        guard let fd = try open(s.name, label) else { return .done }  // gone: nothing of ours is left
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
        guard try Files.renameNoReplace(dir, s.name, dir, aside, label: asideLabel) else { return .retry }
        return .moved(Aside(segment: s, dir: dir, fd: fd, lease: lease))
    }

    private func removeAside(_ a: Aside, rescan: inout [(String, String)]) throws {
        let s = a.segment
        let label = "\(s.spool)/\(s.name)"
        let aside = ".spoolship-reap-\(s.id)"
        let asideLabel = "\(s.spool)/\(aside)"
        guard let moved = try Files.statAt(a.dir, aside, label: asideLabel) else { return }
        let held = try Files.fstat(a.fd)
        let written: Bool
        switch a.lease {
        case .held: written = !Files.readLeaseIntact(a.fd)
        case .writers: written = true
        case .unavailable: written = !Processes.writers(dev: UInt64(held.st_dev), ino: UInt64(held.st_ino)).isEmpty
        }
        let ours = s.isSameFile(moved) && UInt64(held.st_dev) == UInt64(moved.st_dev) && UInt64(held.st_ino) == UInt64(moved.st_ino)
        if ours && s.isSealed(moved) && !written {
            if let adir = archiveDirs[s.spool] {
                var attempt = 0
                while try !Files.renameNoReplace(a.dir, aside, adir, Names.alternateName(s.name, attempt: attempt), label: "archive \(label)") {
                    attempt += 1
                }
            } else {
                try Files.unlink(a.dir, aside, label: asideLabel)
            }
            return
        }
        var attempt = 0
        while try !Files.renameNoReplace(a.dir, aside, a.dir, Names.alternateName(s.name, attempt: attempt), label: label) {
            attempt += 1
        }
        let putBack = Names.alternateName(s.name, attempt: attempt)
        state.withLock { _ = self.putBack.insert("\(s.spool)/\(putBack)") }
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

    /// Forgets a segment whose file vanished or changed before it was shipped (it is sealed
    /// again if it is still there).
    func drop(_ id: UInt64, reason: String) {
        forget(id) { s in
            logger.warning("segment dropped before it was shipped", metadata: ["spool.name": "\(s.spool)", "segment.name": "\(s.name)", "reason": "\(reason)"])
        }
    }

    /// Forgets a segment that the collector will never take (bad name, too large): the file
    /// stays in the spool and is not offered again until the agent restarts.
    func refuse(_ id: UInt64, reason: String) {
        forget(id) { s in
            logger.error("collector refused segment; leaving the file in place", metadata: ["spool.name": "\(s.spool)", "segment.name": "\(s.name)", "error": "\(reason)"])
            refused.insert("\(s.spool)/\(s.name)")
            unshippable["\(s.spool)/\(s.name)"] = LeftBehind(spool: s.spool, raw: Array(s.name.utf8), display: FileName.display(Array(s.name.utf8)),
                                                            reason: "the collector refused it: \(reason)", rotated: s.kind == .log)
        }
    }

    private func forget(_ id: UInt64, _ why: (Segment) -> Void) {
        state.lock()
        guard let s = segments[id] else { state.unlock(); return }
        why(s)
        segments[id] = nil
        let key = "\(s.spool)/\(s.name)"
        var again = false
        if byName[key] == id {
            byName[key] = nil
            again = skippedEvents.remove(key) != nil && !refused.contains(key)
        }
        try? journal.append([StateRecord(op: .done, id: id)], sync: false)
        state.broadcast()
        state.unlock()
        if again && s.kind == .blob { admit([seal(spool: s.spool, name: s.name)].compactMap { $0 }) }
    }

    // MARK: running

    /// Runs until `stop()` (or, with `once`, until everything present at start is
    /// acknowledged). Throws when `once` could make no progress for `timeout` seconds, or the
    /// collector refused the agent for good.
    public func run() throws {
        Thread.current.name = "shipper"
        heartbeats.beat("shipper")
        // With --once, everything there is now is sealed by a scanner thread, and shipping
        // starts with its first batch; the run ends only after the scan. A daemon's watcher
        // scans once its watches are set, so that readiness does not wait for a backlog.
        if config.once {
            state.withLock { scanning = true }
            spawn("scanner") { [self] in
                scanAll()

                // A scan cut short by a stop has not seen everything: `scanning` stays set,
                // so that the run does not report success.
                state.withLock {
                    if !stopped { scanning = false }
                    lastProgress = monotonicNow()
                    state.broadcast()
                }
                // Files within their spool's settle time (found by the scan, or sealed again
                // after a change) are sealed once it has passed, until the run ends.
                while !isStopped && !state.withLock({ segments.isEmpty && rotations.isEmpty && unsettled.isEmpty }) {
                    heartbeats.beat("scanner")
                    usleep(UInt32(min(0.5, max(0.01, nextSettled() - monotonicNow())) * 1_000_000))
                    admit(sealSettled())
                }
            }
        }
        for name in reopenAfterRecovery.sorted() {
            if let s = spoolConfig(name), let l = s.logs { reopenProducers(s, l) }
        }
        if config.once {
            // Every log file with something in it is rotated now, whatever its size or age.
            rotatePass(all: true)
        }
        // The --once clock starts when there is something to ship, not before the scan.
        state.withLock { lastProgress = monotonicNow() }
        if !config.once {
            spawn("watcher") { [self] in watchLoop() }
        } else {
            watching.open()
        }
        spawn("reaper") { [self] in reapLoop() }
        if config.spools.contains(where: { $0.logs != nil }) {
            if !config.once { spawn("rotator") { [self] in rotateLoop() } }
            spawn("sealer") { [self] in sealLoop() }
        }
        heartbeats.beat("shipper")
        if !watching.wait(timeout: 30) {
            logger.warning("the spool watcher is slow to start")
        }
        if !isStopped { Systemd.ready(status: statusLine()) }
        defer {
            // A graceful stop finishes the deletions of what was already acknowledged, and
            // waits for every thread of this agent to end.
            stop(notify: false)
            heartbeats.remove("shipper")
            state.lock()
            let until = Date(timeIntervalSinceNow: 30)
            while !reaperIdle { if !state.wait(until: until) { break } }
            let threadsUntil = Date(timeIntervalSinceNow: 60)
            while liveThreads > 0 { if !state.wait(until: threadsUntil) { break } }
            if liveThreads > 0 { logger.error("threads still running after the stop", metadata: ["threads": "\(liveThreads)"]) }
            state.unlock()
        }
        var backoff = config.backoffMin
        while true {
            heartbeats.beat("shipper")
            if let done = try checkFinished() { return done }
            let session = AgentSession(agent: self)
            do {
                try session.run()
                backoff = config.backoffMin
                state.withLock { lastIDInUse = false }
            } catch let f as FatalRefusal {
                stats.error(.refused)
                state.withLock { lastError = f.description; lastErrorTime = Date().timeIntervalSince1970 }
                throw f
            } catch {
                if isStopped {
                    logger.info("connection closed for the stop; what the collector holds is resumed at the next start")
                } else {
                    stats.error(session.refusedByCollector ? .refused : session.established ? .connection : .connect)
                    state.withLock { lastError = "\(error)"; lastErrorTime = Date().timeIntervalSince1970 }
                    if session.idInUse {
                        logger.error("another connection holds this agent id at the collector; two agents with one id? retrying later",
                                     metadata: ["collector": "\(config.collector)", "error": "\(error)"])
                    } else {
                        logger.warning("connection to collector failed", metadata: ["collector": "\(config.collector)", "error": "\(error)"])
                    }
                }
                if session.madeProgress { backoff = config.backoffMin }
                // Another agent holds the id: try again seldom, not at once (the other one may
                // be this agent's own earlier connection, not yet timed out at the collector).
                if session.idInUse { backoff = max(backoff, Self.idInUseBackoff) }
                state.withLock { lastIDInUse = session.idInUse }
            }
            if let done = try checkFinished() { return done }
            // Jittered exponential backoff, interrupted by stop().
            var wait = backoff * Double.random(in: 0.5...1.0)
            if state.withLock({ lastIDInUse }) { wait = max(wait, Self.idInUseBackoff) }
            backoff = min(config.backoffMax, backoff * 2)
            state.lock()
            let until = Date(timeIntervalSinceNow: wait)
            while !stopped {
                heartbeats.beat("shipper")
                if !state.wait(until: min(until, Date(timeIntervalSinceNow: 1))) && Date() >= until { break }
            }
            state.unlock()
        }
    }

    /// The collector has no room for this segment now: offer it again after a wait that
    /// doubles at each refusal, up to 30 s. Not progress.
    func offerLater(_ id: UInt64) {
        state.withLock {
            let wait = min(30, (deferred[id]?.wait ?? 0.5) * 2)
            deferred[id] = (monotonicNow() + wait * Double.random(in: 0.75...1.0), wait)
        }
    }

    /// Moves the segments whose wait is over back to the offer queue. Under `state`.
    func releaseDeferred() {
        guard !deferred.isEmpty else { return }
        let now = monotonicNow()
        for (id, d) in deferred where d.until <= now && toOffer.firstIndex(of: id) == nil {
            if segments[id] != nil { toOffer.append(id) }
            deferred[id]?.until = .infinity
        }
    }

    /// Starts a thread of this agent, counted in `liveThreads`, beating under its own name
    /// (which is forgotten when it ends).
    private func spawn(_ name: String, _ body: @escaping () -> Void) {
        state.withLock { liveThreads += 1 }
        heartbeats.beat(name)
        startThread(name) { [self] in
            body()
            heartbeats.remove(name)
            state.withLock {
                liveThreads -= 1
                state.broadcast()
            }
        }
    }

    /// For long work on the agent's threads: proves progress to the watchdog, and gives up
    /// (StoppedWork) once the agent is stopping.
    func workProgress() throws {
        heartbeats.beatCurrentThread()
        if isStopped { throw StoppedWork() }
    }

    /// Threads of this agent still running; after `run` returned, anything but 0 means the
    /// state dir is not free for another agent in this process.
    public var threadsLeft: Int { state.withLock { liveThreads } }

    /// Lets go of the state dir (its lock and journal), once `run` has returned.
    public func close() {
        journal.close()
    }

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
        state.withLock {
            var p = Progress(doneSegments: shippedSegments, doneBytes: shippedBytes,
                             totalSegments: shippedSegments, totalBytes: shippedBytes, scanning: scanning)
            for s in segments.values {
                p.totalSegments += 1
                p.totalBytes += s.size
                if s.acked { p.doneSegments += 1; p.doneBytes += s.size }
            }
            return p
        }
    }

    /// The one-line summary for the service manager's STATUS=.
    public func statusLine() -> String {
        state.withLock {
            let pending = segments.values.filter { !$0.acked }
            let bytes = pending.reduce(UInt64(0)) { $0 + $1.size }
            var line = connectedTo.map { "connected to \(config.collector) (\($0))" } ?? "not connected to \(config.collector)"
            if connectedTo == nil, let e = lastError { line += " (last error: \(e.prefix(120)))" }
            if stopped { line = "stopping; " + line }
            line += "; \(pending.count) segment(s), \(bytes) bytes pending"
            if !rotations.isEmpty { line += "; \(rotations.count) rotated file(s) to seal" }
            line += "; shipped \(shippedSegments) segment(s), \(shippedBytes) bytes since start"
            return line
        }
    }

    /// nil to go on; () when the run is over. Throws on a `once` timeout, and when a `once`
    /// run is stopped (SIGTERM) before it shipped everything: its exit status must not say done.
    private func checkFinished() throws -> ()? {
        state.lock()
        defer { state.unlock() }
        if let f = fatal { throw DaemonError(f) }
        if stopped {
            if config.once && scanning {
                throw DaemonError("stopped before every file in the spools was sealed; what is left ships on the next run")
            }
            if config.once && !(segments.isEmpty && rotations.isEmpty) {
                throw DaemonError("stopped with \(segments.count + rotations.count) segment(s) not yet shipped; they ship on the next run")
            }
            return ()
        }
        if config.once {
            if segments.isEmpty && rotations.isEmpty && !scanning && unsettled.isEmpty {
                if let why = incomplete { throw DaemonError("not everything could be shipped: \(why)") }
                if !unshippable.isEmpty {
                    let list = unshippable.values.sorted { ($0.spool, $0.display) < ($1.spool, $1.display) }
                    let shown = list.prefix(10).map { "\($0.spool)/\($0.display) (\($0.reason))" }.joined(separator: "; ")
                    throw DaemonError("everything else shipped, but \(list.count) file(s) stay in the spools and will not ship: \(shown)\(list.count > 10 ? "; ..." : "")")
                }
                return ()
            }
            if !scanning && monotonicNow() - lastProgress > config.timeout {
                var pending = "\(segments.count) segment(s) still pending"
                if !unsettled.isEmpty { pending += ", \(unsettled.count) file(s) not left alone for their settle time" }
                if !rotations.isEmpty { pending += " and \(rotations.count) rotated file(s) not sealed" }
                throw DaemonError("no progress for \(Int(config.timeout)) s shipping to \(config.collector); \(pending); last error: \(lastError ?? "none")")
            }
        }
        return nil
    }

    /// Stops the agent: no new offers, the connection shut down at once (the collector keeps
    /// what arrived), then `run` returns. `notify` says STOPPING=1 to the service manager (not
    /// for a reload, after which the process goes on).
    public func stop(notify: Bool = true) {
        if notify { Systemd.notify("STOPPING=1") }
        state.lock()
        stopped = true
        // Under the lock: the session clears `currentSocket` (under it) before closing the fd.
        currentSocket?.shutdown()
        state.broadcast()
        state.unlock()
    }

    var isStopped: Bool { state.withLock { stopped } }

    /// When the first file waiting out its spool's settle time is due (infinity: none waits).
    func nextSettled() -> Double {
        state.withLock { unsettled.values.map(\.due).min() ?? .infinity }
    }

    /// Seals the files whose settle time has passed (one written to meanwhile waits again).
    func sealSettled() -> [Segment] {
        let now = monotonicNow()
        let due: [(String, Unsettled)] = state.withLock {
            let d = unsettled.filter { $0.value.due <= now }
            for k in d.keys { unsettled[k] = nil }
            return d.sorted { $0.key < $1.key }
        }
        return due.compactMap { key, was in
            guard let slash = key.firstIndex(of: "/") else { return nil }
            return seal(spool: String(key[..<slash]), name: String(key[key.index(after: slash)...]), settled: was)
        }
    }

    private func watchLoop() {
        do {
            let ino = try Inotify()
            var byWatch: [Int32: SpoolConfig] = [:]
            for s in config.spools where s.logs == nil { byWatch[try ino.watch(s.directory)] = s }
            // Ready: what arrives from now on is seen. Then what is there already.
            watching.open()
            scanAll()
            var lastCheck = monotonicNow()
            while !isStopped {
                heartbeats.beat("watcher")
                let events = try ino.read(timeout: min(0.5, max(0.01, nextSettled() - monotonicNow())))
                if monotonicNow() - lastCheck >= 1 {
                    lastCheck = monotonicNow()
                    pruneLeftBehind()
                    for s in reopenReplacedDirectories() where s.logs == nil {
                        byWatch[try ino.watch(s.directory)] = s
                        scan(s)
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
                    if e.mask & UInt32(IN_DELETE_SELF | IN_MOVE_SELF) != 0 {
                        logger.error("spool directory was removed or moved away; watching for it to come back", metadata: ["spool.name": "\(spool.name)", "path": "\(spool.directory)"])
                        continue
                    }
                    if e.rawName.isEmpty { continue }
                    guard let name = e.validName else {
                        if !Self.inProgress(e.rawName) { leaveBehind(spool: spool.name, name: nil, raw: e.rawName, reason: "its name is not valid UTF-8") }
                        continue
                    }
                    var complete = e.mask & UInt32(IN_MOVED_TO) != 0
                    // The agent's own rename back of a file still written to is no producer's.
                    if complete && state.withLock({ putBack.remove("\(spool.name)/\(name)") != nil }) { complete = false }
                    if e.mask & UInt32(IN_CREATE) != 0 {
                        // Only what brings no other event: a hard link made into the spool (more
                        // than one link: complete, as a rename), or what is not a regular file.
                        // A file being created by open(2) waits for its close.
                        guard let dir = state.withLock({ spoolDirs[spool.name] }),
                              let st = try? Files.statAt(dir, name, label: name),
                              (st.st_mode & S_IFMT) != S_IFREG || st.st_nlink > 1 else { continue }
                        complete = true
                    }
                    if let s = seal(spool: spool.name, name: name, renamedIn: complete) { sealed.append(s) }
                }
                sealed += sealSettled()
                let again: [String] = state.withLock {
                    guard !sealLater.isEmpty, monotonicNow() - sealLaterSince >= Self.sealLaterEvery else { return [] }
                    defer { sealLater.removeAll() }
                    return sealLater.sorted()
                }
                for key in again {
                    guard let slash = key.firstIndex(of: "/") else { continue }
                    if let s = seal(spool: String(key[..<slash]), name: String(key[key.index(after: slash)...])) { sealed.append(s) }
                }
                admit(sealed)
            }
        } catch {
            watching.open()
            logger.critical("spool watcher failed; stopping", metadata: ["error": "\(error)"])
            state.withLock { fatal = "the spool watcher failed: \(error)" }
            stop()
        }
    }
}

extension NSCondition {
    func withLock<R>(_ body: () throws -> R) rethrows -> R {
        lock()
        defer { unlock() }
        return try body()
    }
}
