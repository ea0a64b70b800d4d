import Foundation
import Glibc
import Logging
import SpoolshipCore
import SpoolshipIO
import SpoolshipDaemon

/// The collector's data dir, open (its layout is `DataDirLayout`). Every directory below the
/// data dir is opened beneath its parent, symlinks refused (Files.openBeneath: openat2, or one
/// openat a component where it is refused).
final class DataDir: Sendable {
    let layout: DataDirLayout
    var path: String { layout.path }
    let root: OwnedFD
    let area: OwnedFD
    let partialRoot: OwnedFD
    let ledgerRoot: OwnedFD
    let lock: OwnedFD
    /// The syncs of the data dir's file system that commit batches share (`commit-sync`).
    let groupSync: GroupSync
    private let agents = Locked<[String: AgentStore]>([:])

    init(path: String) throws {
        let layout = DataDirLayout(path: path)
        self.layout = layout
        try Files.makeDirectories(path)
        root = try Files.openDirectory(path)
        area = try Files.ensureDirectory(root, DataDirLayout.area, label: layout.areaPath, mode: 0o700)
        guard let l = try Files.lockExclusive(layout.lockPath) else {
            throw DaemonError("another collector is running on the data dir \(path) (it holds \(layout.lockPath))")
        }
        lock = l
        partialRoot = try Files.ensureDirectory(area, DataDirLayout.partialName, label: layout.partialRootPath, mode: 0o700)
        ledgerRoot = try Files.ensureDirectory(area, DataDirLayout.ledgerName, label: layout.ledgerRootPath, mode: 0o700)
        // A descriptor of its own: syncfs keeps its error state in the open file.
        groupSync = GroupSync(fd: try Files.openDirectory(path))
    }

    /// Removes partials untouched for `maxAge` seconds: segments their agent never offered
    /// again (deleted on the agent, or the agent retired). Runs at start, before any
    /// connection, so no partial in use can be removed. Returns how many were removed.
    func removeStalePartials(maxAge: Double, logger: Logger) -> Int {
        let cutoff = Date().timeIntervalSince1970 - maxAge
        var removed = 0
        for (agent, dir) in partialDirectories() {
            for e in (try? Files.entries(of: dir)) ?? [] {
                guard let name = e.name, DataDirLayout.isPartialFile(name) else { continue }
                let p = layout.partialFilePath(agent: agent, name: name)
                guard let st = try? Files.statAt(dir, name, label: p),
                      Double(st.st_mtim.tv_sec) + Double(st.st_mtim.tv_nsec) / 1e9 < cutoff else { continue }
                if (try? Files.unlink(dir, name, label: p)) == true {
                    removed += 1
                    logger.notice("removed a stale partial", metadata: ["path": "\(p)", "agent.id": "\(agent)"])
                }
            }
        }
        return removed
    }

    /// Every agent's partial directory under `.spoolship/partial`, open, by agent id (what is
    /// on disk: agents not connected included).
    func partialDirectories() -> [(agent: String, dir: OwnedFD)] {
        var out: [(agent: String, dir: OwnedFD)] = []
        for e in (try? Files.entries(of: partialRoot)) ?? [] {
            guard let agent = e.name,
                  let dir = try? Files.openBeneath(partialRoot, agent, O_RDONLY | O_DIRECTORY, label: layout.partialPath(agent: agent))
            else { continue }
            out.append((agent, dir))
        }
        return out
    }

    /// The store of one agent, opened (and its ledger loaded) on first use.
    func agent(_ id: String, logger: Logger) throws -> AgentStore {
        try agents.withLock { map in
            if let s = map[id] { return s }
            let s = try AgentStore(id: id, dataDir: self, logger: logger)
            map[id] = s
            return s
        }
    }
}

/// One agent's corner of the data dir: its directories, its ledger, and which connection owns it.
///
/// `@unchecked Sendable`: the reader and durability threads of the owning connection, and the
/// threads of connections claiming the agent, share it. Its mutable state is guarded: the
/// ledger map, the directories, the owner and `nextVersion` by `state`; `_broken` and the
/// ledger file by `ledgerLock`. `leftovers` has no lock: only the reader thread of the
/// connection that owns the store (`claim`) touches it.
final class AgentStore: @unchecked Sendable {
    let id: String
    let dataDir: DataDir
    /// The agent's directory under the data dir, made at its first commit.
    private var agentDir: OwnedFD?
    let partialDir: OwnedFD
    private let ledgerFD: OwnedFD
    private let state = NSCondition()
    private var ledger: [SegmentKey: String] = [:]
    private var spoolDirs: [String: OwnedFD] = [:]
    private var owner: ObjectIdentifier?
    /// Set when the ledger failed to sync: nothing is acknowledged for this agent any more.
    /// Under `ledgerLock`.
    private var _broken: String?
    /// Held across a whole ledger append (write, fdatasync, map update): the reader (on-disk
    /// lookups) and the durability thread (commits) both append, and a sync error must be
    /// seen by the one whose lines it concerns, never consumed by the other.
    private let ledgerLock = NSLock()

    var broken: String? { ledgerLock.lock(); defer { ledgerLock.unlock() }; return _broken }
    private var ownerKill: ((String) -> Void)?
    /// When the id was taken from a live owner lately (monotonic seconds).
    private var takeovers: [Double] = []
    private var ownerPeer: String?
    private var ownerHeard: (() -> Double)?
    /// Partial files no transfer has open (left by a connection that ended before their
    /// segments were complete), by name: their size and when they were left. Counted against
    /// the agent's partial limit, and dropped oldest first to make room. Only the connection
    /// that owns the store touches it (see `claim`).
    private(set) var leftovers: [String: (bytes: UInt64, since: Double)] = [:]

    /// For each committed name (`spool/name`), the first `name~N` suffix not known to be taken:
    /// a producer that rewrites one file over and over gets a version a commit, and trying
    /// `name`, `name~1`, ... from the start each time would cost a rename per version. Learnt
    /// at the first commit of the name after a start (one pass over the versions on disk).
    /// Only the connection that owns the store commits (see `claim`), under `state` anyway.
    private var nextVersion: [String: Int] = [:]

    /// Per spool: the names in its directory that the ledger did not record when the
    /// directory was first looked at after the start (`hasLooseFiles`), less those recorded
    /// since. Under `state`.
    private var loose: [String: Set<String>] = [:]

    /// Puts a verified partial into its spool directory under the segment's name, or
    /// `name~N` with the first N free, without ever replacing a file (a named partial is
    /// renamed, an unnamed one linked); returns the name used.
    func commitName(_ file: PartialFile, spool: String, name: String, into dir: OwnedFD) throws -> String {
        let key = "\(spool)/\(name)"
        var attempt = state.withLock { nextVersion[key] ?? 0 }
        let unnamed = file.isUnnamed ? file.descriptor : nil
        while true {
            let candidate = Names.alternateName(name, attempt: attempt)
            let label = dataDir.layout.segmentPath(agent: id, spool: spool, name: candidate)
            let placed = if let fd = unnamed { try Files.linkUnnamed(fd, dir, candidate, label: label) }
                         else { try Files.renameNoReplace(partialDir, file.name, dir, candidate, label: label) }
            if placed {
                // Remembered only for names that have versions: most names never come again.
                if attempt > 0 { state.withLock { nextVersion[key] = attempt + 1 } }
                return candidate
            }
            attempt += 1
        }
    }

    var agentPath: String { dataDir.layout.agentPath(id) }
    var partialPath: String { dataDir.layout.partialPath(agent: id) }
    var ledgerPath: String { dataDir.layout.ledgerPath(agent: id) }

    init(id: String, dataDir: DataDir, logger: Logger) throws {
        self.id = id
        self.dataDir = dataDir
        partialDir = try Files.ensureDirectory(dataDir.partialRoot, id, label: dataDir.layout.partialPath(agent: id), mode: 0o700)
        let lpath = dataDir.layout.ledgerPath(agent: id)
        let lname = DataDirLayout.ledgerFileName(agent: id)
        let existed = try Files.statAt(dataDir.ledgerRoot, lname, label: lpath) != nil
        ledgerFD = try Files.openBeneath(dataDir.ledgerRoot, lname, O_RDWR | O_CREAT | O_APPEND, mode: 0o600, label: lpath)
        let bytes = try Files.readAll(ledgerFD)
        let contents = try RecordLog.parse(bytes, kind: LedgerEntry.kind, version: LedgerEntry.version, as: LedgerEntry.self)
        for e in contents.records { ledger[e.key] = e.stored }
        if contents.damagedLines > 0 {
            logger.error("ledger has damaged lines; they were skipped (their files are found again on disk if re-offered)", metadata: [
                "path": "\(lpath)", "lines": "\(contents.damagedLines)"])
        }
        if contents.droppedTail && contents.goodBytes == 0 {
            // Even the header line is torn: nothing was ever recorded. Start the file again.
            logger.warning("ledger header is torn; rewriting it", metadata: ["path": "\(lpath)"])
            try Files.truncate(ledgerFD, 0)
        }
        if bytes.isEmpty || contents.goodBytes == 0 {
            try Files.writeAll(ledgerFD, RecordLog.headerLine(kind: LedgerEntry.kind, version: LedgerEntry.version))
            try Files.fdatasync(ledgerFD)
            if !existed { try Files.fsync(dataDir.ledgerRoot) }
        } else if contents.droppedTail {
            logger.warning("ledger has a damaged tail; dropping it", metadata: [
                "path": "\(lpath)", "bytes.good": "\(contents.goodBytes)", "bytes.dropped": "\(bytes.count - contents.goodBytes)"])
            try Files.truncate(ledgerFD, Int64(contents.goodBytes))
            try Files.fdatasync(ledgerFD)
        }
        for e in (try? Files.entries(of: partialDir)) ?? [] {
            guard let name = e.name, DataDirLayout.isPartialFile(name),
                  let st = try Files.statAt(partialDir, name, label: dataDir.layout.partialFilePath(agent: id, name: name)), (st.st_mode & S_IFMT) == S_IFREG else { continue }
            leftovers[name] = (UInt64(st.st_size), Double(st.st_mtim.tv_sec))
        }
    }

    // MARK: partial data, for the per-agent limit

    var leftoverBytes: UInt64 { leftovers.values.reduce(0) { $0 + $1.bytes } }

    /// A transfer has opened this partial: it no longer counts as left over.
    func adopt(_ partialName: String) { leftovers[partialName] = nil }

    /// A connection ended with this partial unfinished.
    func leave(_ partialName: String, bytes: UInt64) {
        leftovers[partialName] = (bytes, Date().timeIntervalSince1970)
    }

    /// Removes left-over partials, oldest first, until at least `bytes` are freed or none is
    /// left; returns what was freed. Losing one costs only a resend: its agent still has the
    /// segment.
    func dropLeftovers(freeing bytes: UInt64, except keep: String, logger: Logger) -> UInt64 {
        var freed: UInt64 = 0
        for (name, info) in leftovers.sorted(by: { $0.value.since < $1.value.since }) where name != keep {
            guard freed < bytes else { break }
            let label = dataDir.layout.partialFilePath(agent: id, name: name)
            _ = try? Files.unlink(partialDir, name, label: label)
            leftovers[name] = nil
            freed += info.bytes
            logger.notice("dropped a left-over partial to stay within the agent's partial limit", metadata: [
                "path": "\(label)", "bytes": "\(info.bytes)"])
        }
        return freed
    }

    // MARK: ownership: one connection per agent at a time, the newest wins

    /// Makes `connection` the owner, asking a previous owner to stop and waiting up to
    /// `timeout` for it to let go. Returns false on timeout.
    enum Claim {
        case claimed
        /// The previous connection did not let go in time.
        case timedOut
        /// Another connection of this id was heard from `ago` seconds ago, from `peer`, and
        /// the id has changed hands too often lately: two agents with one id.
        case inUse(peer: String, ago: Double)
    }

    /// A connection heard from (a frame read) within this many seconds is alive. An agent pings
    /// a third of its io-timeout (30 s by default) after its last frame.
    static let liveWindow: Double = 15
    /// Taking an id from a live connection this many times within `takeoverWindow` seconds
    /// means two agents share the id: further newcomers are refused while the owner lives.
    static let takeoversAllowed = 2
    static let takeoverWindow: Double = 60

    /// Makes `connection` the agent's only one. The newest connection wins, as an agent that
    /// restarted, or reconnected after a cut the collector has not noticed, must not wait for
    /// its old connection to time out: the owner is told why (`kill(peer)`) and closed, and
    /// waited for at most `timeout` seconds. But an id taken from a live owner more than
    /// `takeoversAllowed` times in `takeoverWindow` seconds belongs to two agents: a newcomer
    /// is then refused (`.inUse`) while the owner lives, so that the two stop taking the
    /// connection from each other.
    func claim(_ connection: ObjectIdentifier, peer: String, heard: @escaping () -> Double, kill: @escaping (String) -> Void, timeout: Double) -> Claim {
        state.lock()
        let now = monotonicNow()
        if owner != nil, let last = ownerHeard?(), now - last < Self.liveWindow {
            takeovers.removeAll { now - $0 > Self.takeoverWindow }
            if takeovers.count >= Self.takeoversAllowed {
                let other = ownerPeer ?? "?"
                state.unlock()
                return .inUse(peer: other, ago: now - last)
            }
            takeovers.append(now)
        }
        // Told outside the lock: telling it is a send, which may wait on its socket.
        let current = owner != nil ? ownerKill : nil
        state.unlock()
        current?(peer)
        state.lock()
        defer { state.unlock() }
        let deadline = Date(timeIntervalSinceNow: timeout)
        while owner != nil {
            if !state.wait(until: deadline) { return .timedOut }
        }
        owner = connection
        ownerKill = kill
        ownerPeer = peer
        ownerHeard = heard
        return .claimed
    }

    func release(_ connection: ObjectIdentifier) {
        state.lock()
        if owner == connection {
            owner = nil
            ownerKill = nil
            ownerPeer = nil
            ownerHeard = nil
            state.broadcast()
        }
        state.unlock()
    }

    // MARK: ledger

    func committedName(_ key: SegmentKey) -> String? {
        state.lock(); defer { state.unlock() }
        return ledger[key]
    }

    /// Appends entries and syncs the ledger once for the batch; `timed` gets the sync's seconds.
    func record(_ entries: [LedgerEntry], timed: ((Double) -> Void)? = nil) throws {
        guard !entries.isEmpty else { return }
        ledgerLock.lock()
        defer { ledgerLock.unlock() }
        if let b = _broken { throw DaemonError(b) }
        var bytes: [UInt8] = []
        for e in entries { bytes += RecordLog.line(e) }
        do {
            try Files.writeAll(ledgerFD, bytes)
            let started = monotonicNow()
            defer { timed?(monotonicNow() - started) }
            try Files.fdatasync(ledgerFD)
        } catch {
            _broken = "the ledger \(ledgerPath) failed (\(error)); restart the collector once the disk is healthy"
            throw error
        }
        state.lock()
        for e in entries {
            ledger[e.key] = e.stored
            loose[e.key.spool]?.remove(e.stored)
        }
        state.unlock()
    }

    var committedCount: Int { state.lock(); defer { state.unlock() }; return ledger.count }

    // MARK: directories

    /// The directory of a spool under the agent's directory, created (and its parent synced)
    /// on first use: at a commit, so that nothing appears under the data dir before then.
    func spoolDir(_ spool: String) throws -> OwnedFD {
        state.lock(); defer { state.unlock() }
        if let d = spoolDirs[spool] {
            // A consumer may have removed the directory: then make it again.
            if (try? Files.fstat(d))?.st_nlink != 0 { return d }
            spoolDirs[spool] = nil
            if let a = agentDir, (try? Files.fstat(a))?.st_nlink == 0 { agentDir = nil; spoolDirs.removeAll() }
        }
        let a: OwnedFD
        if let existing = agentDir {
            a = existing
        } else {
            a = try Files.ensureDirectory(dataDir.root, id, label: agentPath)
            agentDir = a
        }
        let d = try Files.ensureDirectory(a, spool, label: dataDir.layout.spoolPath(agent: id, spool: spool))
        spoolDirs[spool] = d
        return d
    }

    /// The spool's directory if it exists; nil otherwise (nothing is created).
    func existingSpoolDir(_ spool: String) throws -> OwnedFD? {
        state.lock()
        let cached = spoolDirs[spool]
        state.unlock()
        if let d = cached { return d }
        // One component at a time, each relative to its parent's handle.
        guard try Files.statAt(dataDir.root, id, label: agentPath) != nil else { return nil }
        let agent = try Files.openBeneath(dataDir.root, id, O_RDONLY | O_DIRECTORY, label: agentPath)
        guard try Files.statAt(agent, spool, label: dataDir.layout.spoolPath(agent: id, spool: spool)) != nil else { return nil }
        return try spoolDir(spool)
    }

    /// Looks for `key` already committed on disk under its name or an alternate one (a crash
    /// between the commit rename and the ledger write leaves it there). Returns the stored
    /// name after making sure the directory entry is durable.
    ///
    /// Only where the spool's directory held files the ledger does not record when it was
    /// first looked at (`hasLooseFiles`): otherwise nothing can be found, and most offers
    /// (new segments) pay no look-up on disk.
    func findOnDisk(_ key: SegmentKey) throws -> String? {
        guard let dir = try existingSpoolDir(key.spool), try hasLooseFiles(key.spool, in: dir) else { return nil }
        // Up to the first name that is free, as a commit takes it (`commitName`).
        for attempt in 0... {
            let name = Names.alternateName(key.name, attempt: attempt)
            let label = dataDir.layout.segmentPath(agent: id, spool: key.spool, name: name)
            guard let st = try Files.statAt(dir, name, label: label) else { return nil }
            guard (st.st_mode & S_IFMT) == S_IFREG, UInt64(st.st_size) == key.size else { continue }
            let fd = try Files.openBeneath(dir, name, O_RDONLY, label: label)
            if try Files.checksum(fd, size: Int64(key.size)) == key.crc {
                try Files.fsync(dir)
                return name
            }
        }
        return nil
    }

    /// Whether the spool's directory holds files the ledger does not record. Listed once per
    /// spool, at its first look-up after the start: files that were put in place after that
    /// without a ledger line are this process's own commits between their link and their
    /// ledger line. `record` takes the recorded names out again; a name found by `findOnDisk`
    /// is recorded with it.
    private func hasLooseFiles(_ spool: String, in dir: OwnedFD) throws -> Bool {
        if let known = state.withLock({ loose[spool] }) { return !known.isEmpty }
        // Read under the lock, once per spool and start: no commit is recorded meanwhile, so
        // none is taken for a loose file, and only the unrecorded names are kept.
        return try state.withLock {
            let recorded = Set(ledger.compactMap { $0.key.spool == spool ? $0.value : nil })
            var unrecorded = Set<String>()
            for e in try Files.entries(of: dir) { if let n = e.name, !recorded.contains(n) { unrecorded.insert(n) } }
            loose[spool] = unrecorded
            return !unrecorded.isEmpty
        }
    }
}
