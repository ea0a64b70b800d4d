import Foundation
import Glibc
import Logging
import SpoolshipCore
import SpoolshipIO
import SpoolshipDaemon

public struct CollectorConfig: Sendable {
    public var listen: Endpoint
    public var dataDir: String
    public var collectorID: String = ProcessInfo.processInfo.hostName
    public var maxFrameBody: Int = Wire.defaultMaxFrameBody
    /// The largest segment accepted; larger offers are refused with `tooLarge`.
    public var maxSegmentSize: UInt64 = 1 << 40
    /// Offers an agent may have outstanding on one connection.
    public var window: UInt32 = 512
    /// A peer must complete its hello within this many seconds.
    public var handshakeTimeout: Double = 10
    /// A connection on which nothing arrives for this long is dropped (agents ping when idle).
    public var idleTimeout: Double = 60
    /// A durable checkpoint is taken every this many bytes of a segment, or
    public var checkpointBytes: Int64 = 64 << 20
    /// every this many seconds, whichever comes first.
    public var checkpointInterval: Double = 1
    public var maxConnections: Int = 4096
    public var portFile: String?
    /// Partials untouched for this long are removed at start (their agent never came back).
    public var partialMaxAge: Double = 7 * 86400
    /// A listening socket passed by the service manager (socket activation); `listen` is then
    /// only a label.
    public var inheritedListener: Int32?
    /// Free space on the data dir's file system that incoming segments may not use: an offer
    /// that would eat into it is refused with "no space" (the agent retries with backoff).
    public var freeSpaceReserve: UInt64 = 256 << 20
    /// What one agent's unfinished segments may take at the collector: the segments it has on
    /// offer (at their full size) and the partials it left behind. Past it, left-over partials
    /// are dropped oldest first, then offers are answered "retry later". 0: no limit.
    public var maxPartialBytes: UInt64 = 64 << 30
    /// The largest segment an agent may offer: the smaller of the two limits.
    public var largestSegment: UInt64 { maxPartialBytes == 0 ? maxSegmentSize : min(maxSegmentSize, maxPartialBytes) }
    /// The agents that may connect, with their secrets (`--agents FILE`); nil accepts any
    /// well-formed agent id without credentials.
    public var agents: [String: [UInt8]]?

    public init(listen: Endpoint, dataDir: String) {
        self.listen = listen
        self.dataDir = dataDir
    }
}

/// The collector: accepts agents, splices their segments into partial files, commits them
/// durably and acknowledges. One thread accepts; each connection has a reader thread (frames
/// and splice) and a durability thread (fdatasync, checksum, commit rename, ledger, acks).
public final class Collector: @unchecked Sendable {
    private let configBox: Locked<CollectorConfig>
    /// The current settings; a reload changes the limits for the connections that follow.
    public var config: CollectorConfig { configBox.withLock { $0 } }
    let logger: Logger
    let dataDir: DataDir
    let listener: Socket
    public let port: UInt16
    private let connections = Locked<[ObjectIdentifier: CollectorConnection]>([:])
    private let stopping = Latch()
    var heartbeats: Heartbeats { Heartbeats.shared }
    /// The figures since start: status and metrics read them.
    public let stats: CollectorStats
    /// When the collector started (wall clock).
    let startedAt = Date().timeIntervalSince1970

    public init(config: CollectorConfig, logger: Logger, stats: CollectorStats = CollectorStats()) throws {
        configBox = Locked(config)
        self.logger = logger
        self.stats = stats
        // Each connection holds a socket, a pipe and its open partials: allow what the hard
        // limit allows.
        Processes.raiseDescriptorLimit()
        dataDir = try DataDir(path: config.dataDir)
        _ = dataDir.removeStalePartials(maxAge: config.partialMaxAge, logger: logger)
        if let fd = config.inheritedListener {
            let owned = OwnedFD(fd, label: "socket from systemd")
            listener = Socket(fd: owned, peer: "socket from systemd")
            port = try Socket.boundPort(owned)
        } else {
            (listener, port) = try Socket.listen(config.listen)
        }
        if let pf = config.portFile {
            let url = URL(fileURLWithPath: pf)
            try Files.replaceDurably(dir: url.deletingLastPathComponent().path, name: url.lastPathComponent, bytes: Array("\(port)\n".utf8))
        }
    }

    public var isStopping: Bool { stopping.isOpen }

    /// The open connections (handshakes under way included).
    func connectionList() -> [CollectorConnection] { connections.withLock { Array($0.values) } }

    /// Accepts connections until `stop()`; returns once every connection has ended.
    public func run() {
        logger.info("listening", metadata: ["address": "\(address)", "data_dir": "\(config.dataDir)"])
        if let a = config.agents {
            logger.info("agents must authenticate", metadata: ["agents": "\(a.count)"])
        } else {
            logger.warning("no authentication: any peer that sends a well-formed agent id may write under that id (give --agents FILE to require credentials)")
        }
        heartbeats.beat("accept")
        heartbeats.startWatchdog(logger: logger) { [self] in statusLine }
        if !stopping.isOpen { Systemd.ready(status: statusLine) }
        while !stopping.isOpen {
            heartbeats.beat("accept")
            let sock: Socket?
            do {
                switch try listener.accept(timeout: 1) {
                case .accepted(let s): sock = s
                case .timedOut: continue
                case .shutDown: sock = nil
                }
            } catch {
                if stopping.isOpen { break }
                // EMFILE and friends: say so, then give descriptors a moment to come back.
                logger.error("accept failed", metadata: ["error": "\(error)"])
                _ = stopping.wait(timeout: 0.1)
                continue
            }
            guard let s = sock else { break }
            if stopping.isOpen { s.abort(); break }
            let count = connections.withLock { $0.count }
            if count >= config.maxConnections {
                logger.warning("too many connections; refusing", metadata: ["peer": "\(s.peer)", "limit": "\(config.maxConnections)"])
                s.abort()
                continue
            }
            stats.accepted()
            let c = CollectorConnection(socket: s, collector: self)
            connections.withLock { $0[ObjectIdentifier(c)] = c }
            startThread("conn \(s.peer)") { [self] in
                c.run()
                connections.withLock { $0[ObjectIdentifier(c)] = nil }
            }
        }
        // Graceful stop: every connection is told and closed; what is durable stays.
        let live = connections.withLock { Array($0.values) }
        for c in live { c.kill() }
        let deadline = monotonicNow() + 30
        while connections.withLock({ !$0.isEmpty }) && monotonicNow() < deadline {
            usleep(20_000)  // connections end on their own threads; poll for the last one
        }
        logger.info("stopped")
    }

    /// Takes the limits and timeouts of a reloaded configuration, for the connections that
    /// follow. The address and the data dir take effect only at a restart; they are kept.
    public func reload(_ next: CollectorConfig) -> [String] {
        configBox.withLock { c in
            var ignored: [String] = []
            if next.listen != c.listen && c.inheritedListener == nil { ignored.append("listen") }
            if next.dataDir != c.dataDir { ignored.append("data-dir") }
            if next.portFile != c.portFile { ignored.append("port-file") }
            c.maxSegmentSize = next.maxSegmentSize
            c.handshakeTimeout = next.handshakeTimeout
            c.idleTimeout = next.idleTimeout
            c.checkpointBytes = next.checkpointBytes
            c.maxConnections = next.maxConnections
            c.freeSpaceReserve = next.freeSpaceReserve
            c.maxPartialBytes = next.maxPartialBytes
            c.maxFrameBody = next.maxFrameBody
            if (next.agents == nil) != (c.agents == nil) { ignored.append("agents (turning authentication on or off)") } else { c.agents = next.agents }
            // partial-max-age is used at start only: the next start takes it.
            return ignored
        }
    }

    /// After a reload: an agent removed from the agents file loses the connection it has (it
    /// would be refused at its next handshake anyway). A changed secret does not close it, so
    /// that a secret can be changed on the collector first and on the agent next.
    public func closeRevokedConnections() {
        guard let agents = config.agents else { return }
        for c in connections.withLock({ Array($0.values) }) { c.closeIfRevoked(agents) }
    }

    /// Where it listens, for the log and the status line.
    var address: String {
        config.inheritedListener != nil ? "socket from systemd, port \(port)" : Endpoint(host: config.listen.host, port: port).description
    }

    /// The one-line summary for the service manager's STATUS=.
    public var statusLine: String {
        let agents = connections.withLock { $0.count }
        let t = stats.snapshot()
        if stopping.isOpen { return "stopping; \(agents) connection(s) finishing" }
        return "listening on \(address); \(agents) connection(s); \(t.committedSegments) segment(s), \(t.committedBytes) bytes committed since start"
    }

    public func stop() {
        Systemd.notify("STOPPING=1")
        stopping.open()
        // A socket from systemd stays systemd's: shutting it down would take it out of the
        // listening state for the socket unit too. The accept loop sees `stopping` within 1 s.
        if config.inheritedListener == nil { listener.shutdown() }
    }
}

/// One partial segment being received.
final class Transfer: @unchecked Sendable {
    let tag: UInt64
    let key: SegmentKey
    let partialName: String
    let label: String
    var fd: OwnedFD?
    /// Bytes in the file (reader thread writes, durability thread reads; under `lock`).
    private var _written: Int64
    private let lock = NSLock()
    // Owned by the durability thread:
    var synced: Int64
    var crc = CRC32()
    var crcOffset: Int64 = 0
    var directorySynced: Bool
    // Reader-side bookkeeping for checkpoint requests.
    var lastCheckpointRequest: Int64
    var lastCheckpointTime: Double
    var checkpointPending = false
    private var _poisoned = false
    private var _retired = false

    init(tag: UInt64, key: SegmentKey, label: String, fd: OwnedFD?, held: Int64) {
        self.tag = tag
        self.key = key
        self.partialName = key.partialFileName
        self.label = label
        self.fd = fd
        _written = held
        synced = held
        directorySynced = fd != nil
        lastCheckpointRequest = held
        lastCheckpointTime = monotonicNow()
    }

    var written: Int64 {
        get { lock.lock(); defer { lock.unlock() }; return _written }
        set { lock.lock(); _written = newValue; lock.unlock() }
    }
    var poisoned: Bool {
        get { lock.lock(); defer { lock.unlock() }; return _poisoned }
        set { lock.lock(); _poisoned = newValue; lock.unlock() }
    }
    /// Replaced by a newer offer of the same segment (which uses the same partial file).
    var retired: Bool {
        get { lock.lock(); defer { lock.unlock() }; return _retired }
        set { lock.lock(); _retired = newValue; lock.unlock() }
    }
}

/// A protocol-level refusal: sent to the peer as an ERROR frame, then the connection closes.
struct Refusal: Error, CustomStringConvertible {
    var code: ErrorCode
    var tag: UInt64 = 0
    var message: String
    /// Already counted in the stats under a kind of its own.
    var counted = false
    var description: String { "\(code): \(message)" }
}

final class CollectorConnection: @unchecked Sendable {
    let socket: Socket
    unowned let collector: Collector
    var logger: Logger
    /// The settings when the connection was accepted.
    let config: CollectorConfig
    private let sendLock = NSLock()
    private var store: AgentStore?
    private var transfers: [UInt64: Transfer] = [:]
    private var splicer: Splicer?
    private let jobs = NSCondition()
    private var queue: [Job] = []
    private var workerDone = Latch()
    private var workerStarted = false
    private var closing = false
    /// The collector's own preamble goes before its first frame, WELCOME or ERROR.
    private var sentPreamble = false
    /// The agent that authenticated on this connection (nil without --agents).
    private let authenticated = Locked<String?>(nil)
    /// This connection's figures, for status.
    let stats: ConnectionStats

    enum Job {
        case checkpoint(Transfer)
        case commit(Transfer)
    }

    init(socket: Socket, collector: Collector) {
        self.socket = socket
        self.collector = collector
        config = collector.config
        stats = ConnectionStats(address: socket.peer)
        var l = collector.logger
        l[metadataKey: "peer"] = "\(socket.peer)"
        logger = l
    }

    func kill() { socket.shutdown() }

    /// Another connection presented this agent's id and takes over: this one is told why
    /// (ERROR 10, so that a twin agent says what is wrong) and closed.
    func supersede(by peer: String) {
        let id = store?.id ?? "?"
        logger.warning("agent id connected again from elsewhere; closing this connection (a restart, or two agents with one id?)",
                       metadata: ["agent.id": "\(id)", "other.peer": "\(peer)"])
        // Only if no send of this connection is under way: one blocked on a dead peer would hold
        // the newcomer up until its deadline.
        if sendLock.try() {
            sendLock.unlock()
            try? send([.error(code: ErrorCode.agentIDInUse.rawValue, tag: 0,
                              message: "agent id \(id) connected again from \(peer); closing this connection (two agents configured with one id?)")])
        }
        socket.shutdown()
    }

    /// When the agent was last heard from (a frame read): a second connection with the same id
    /// is refused while this one is alive (`AgentStore.claim`).
    private let heard = Locked<Double>(monotonicNow())

    func closeIfRevoked(_ agents: [String: [UInt8]]) {
        guard let id = authenticated.withLock({ $0 }), agents[id] == nil else { return }
        logger.warning("closing the connection of an agent removed from the agents file", metadata: ["agent.id": "\(id)"])
        kill()
    }

    func send(_ frames: [Frame]) throws {
        var w = FrameWriter()
        for f in frames {
            // An ERROR's text may quote what the peer sent (a name, an id): escaped, as in a log.
            if case .error(let code, let tag, let message) = f {
                w.append(.error(code: code, tag: tag, message: LogText.escaped(message)))
            } else {
                w.append(f)
            }
        }
        sendLock.lock()
        defer { sendLock.unlock() }
        if !sentPreamble {
            sentPreamble = true
            try socket.sendAll(Wire.preamble + w.bytes)
        } else {
            try socket.sendAll(w.bytes)
        }
    }

    func run() {
        socket.setTimeouts(receive: config.handshakeTimeout, send: config.idleTimeout)
        socket.setNoDelay()
        var claimed = false
        let me = ObjectIdentifier(self)
        do {
            let store = try handshake()
            self.store = store
            let heard = self.heard
            switch store.claim(me, peer: socket.peer, heard: { heard.withLock { $0 } }, kill: { [weak self] in self?.supersede(by: $0) }, timeout: 10) {
            case .claimed: break
            case .timedOut:
                throw Refusal(code: .shuttingDown, message: "another connection of agent \(store.id) is still closing; retry")
            case .inUse(let other, let ago):
                logger.warning("agent id in use by another live connection; refusing this one (two agents with one id?)", metadata: [
                    "agent.id": "\(store.id)", "other.peer": "\(other)", "other.heard_seconds_ago": "\(String(format: "%.1f", ago))"])
                collector.stats.error(.agentIDInUse)
                throw Refusal(code: .agentIDInUse, message: "agent id \(store.id) is in use by a live connection from \(other) (heard \(String(format: "%.1f", ago)) s ago); two agents configured with one id? Give each agent its own id", counted: true)
            }
            claimed = true
            splicer = try Splicer()
            let welcome = Welcome(collectorID: config.collectorID, maxFrameBody: UInt32(config.maxFrameBody),
                                  maxSegmentSize: config.largestSegment, window: config.window)
            try send([.welcome(welcome)])
            stats.identified(store.id)
            logger.info("agent connected", metadata: ["agent.id": "\(store.id)"])
            workerStarted = true
            startThread("durability \(socket.peer)") { [self] in durabilityLoop() }
            socket.setTimeouts(receive: config.idleTimeout, send: config.idleTimeout)
            try readLoop()
            logger.info("agent disconnected")
        } catch let r as Refusal {
            logger.warning("refusing peer", metadata: ["error.code": "\(r.code)", "error": "\(r.message)"])
            if !r.counted { collector.stats.error(Self.errorKind(r, welcomed: workerStarted)) }
            try? send([.error(code: r.code.rawValue, tag: r.tag, message: r.message)])
        } catch let e as SyscallError where e.errno == ECONNRESET || e.errno == EPIPE || e.errno == ETIMEDOUT {
            logger.notice("connection ended", metadata: ["error": "\(e)"])
            // A peer that closes before its first byte (a TCP health check, a port scan) is
            // not an error.
            if e.path?.hasSuffix("(closed before hello)") != true {
                collector.stats.error(workerStarted ? .connection : .handshake)
            }
        } catch let e as SyscallError where e.isNoSpace {
            logger.error("no space left on the collector's disk", metadata: ["error": "\(e)"])
            collector.stats.error(.noSpace)
            try? send([.error(code: ErrorCode.noSpace.rawValue, tag: 0, message: "\(e)")])
        } catch {
            logger.error("connection failed", metadata: ["error": "\(error)"])
            collector.stats.error(.internal)
            try? send([.error(code: ErrorCode.internalError.rawValue, tag: 0, message: "\(error)")])
        }
        // Let the durability thread finish what was fully received, then let go of the agent.
        jobs.lock(); closing = true; jobs.broadcast(); jobs.unlock()
        if workerStarted { workerDone.wait(timeout: 3600) }
        for t in transfers.values {
            let hadFile = t.fd != nil
            try? t.fd?.close()
            guard let s = store else { continue }
            if t.poisoned {
                _ = try? Files.unlink(s.partialDir, t.partialName, label: t.label)
            } else if hadFile {
                s.leave(t.partialName, bytes: UInt64(max(0, t.written)))
            }
        }
        transfers.removeAll()
        if claimed, let s = store { s.release(me) }
        socket.lingeringClose()
    }

    /// The kind of error a refusal counts as: anything before WELCOME is the handshake's; a
    /// poisoned partial was counted when its sync failed.
    static func errorKind(_ r: Refusal, welcomed: Bool) -> CollectorStats.ErrorKind? {
        guard welcomed else { return .handshake }
        switch r.code {
        case .ioError: return nil
        case .internalError, .shuttingDown: return .internal
        default: return .protocol
        }
    }

    // MARK: handshake

    private func handshake() throws -> AgentStore {
        // The whole handshake (preamble, HELLO and AUTH) within the handshake deadline.
        frameDeadline = monotonicNow() + config.handshakeTimeout
        defer { frameDeadline = nil }
        guard let pre = try socket.receiveExactly(Wire.preamble.count, deadline: frameDeadline) else {
            throw SyscallError(call: "recv", path: "\(socket.peer) (closed before hello)", errno: ECONNRESET)
        }
        guard pre == Wire.preamble else {
            throw Refusal(code: .protocolViolation, message: FrameError.badPreamble(pre).description)
        }
        // The rest is the state machine's (CollectorHandshake): this only reads and sends.
        var machine = CollectorHandshake(agents: collector.config.agents)
        while true {
            let frame = try readFrame()
            let step: CollectorHandshake.Step
            do {
                step = try machine.receive(frame)
            } catch let r as HandshakeRefusal {
                if let id = machine.agentID { logger[metadataKey: "agent.id"] = "\(id)" }
                if let reason = r.logReason { logger.error("authentication failed", metadata: ["reason": "\(reason)"]) }
                throw Refusal(code: r.code, message: r.message)
            }
            if let id = machine.agentID { logger[metadataKey: "agent.id"] = "\(id)" }
            switch step {
            case .send(let frames): try send(frames)
            case .accepted(let id):
                if collector.config.agents != nil {
                    authenticated.withLock { $0 = id }
                    // A reload that removed this agent while it was proving itself did not see
                    // this connection yet: look again, now that a reload would.
                    if let agents = collector.config.agents, agents[id] == nil {
                        logger.error("authentication failed", metadata: ["reason": "removed from the agents file during the handshake"])
                        throw Refusal(code: .authentication, message: "agent \(id) is not known to this collector")
                    }
                }
                return try collector.dataDir.agent(id, logger: logger)
            }
        }
    }

    /// During the handshake, when the whole of it must have arrived.
    private var frameDeadline: Double?

    private func readFrame() throws -> Frame {
        guard let header = try socket.receiveExactly(Wire.headerSize, deadline: frameDeadline) else {
            throw SyscallError(call: "recv", path: "\(socket.peer) (closed)", errno: ECONNRESET)
        }
        do {
            let (type, length) = try FrameCodec.parseHeader(header, maxBody: config.maxFrameBody)
            // Once its header is in, a frame's body must follow within the idle deadline
            // (the handshake's own deadline if sooner): no trickling.
            let bodyDeadline = min(frameDeadline ?? .infinity, monotonicNow() + config.idleTimeout)
            let body = length == 0 ? [] : (try socket.receiveExactly(length, deadline: bodyDeadline) ?? [])
            guard body.count == length else { throw SyscallError(call: "recv", path: "\(socket.peer) (closed mid-frame)", errno: ECONNRESET) }
            return try FrameCodec.parseBody(type, body[...])
        } catch let e as FrameError {
            throw Refusal(code: e.isTooLarge ? .tooLarge : .protocolViolation, message: e.description)
        }
    }

    // MARK: reader

    private func readLoop() throws {
        while true {
            let frame: Frame
            do {
                frame = try readFrame()
            } catch let e as SyscallError where e.errno == ECONNRESET && e.path?.hasSuffix("(closed)") == true {
                return  // clean close between frames
            }
            heard.withLock { $0 = monotonicNow() }
            switch frame {
            case .offer(let o): try handleOffer(o)
            case .data(let tag, let offset, let length): try handleData(tag: tag, offset: offset, length: length)
            case .ping(let n): try send([.pong(n)])
            case .error(let code, let tag, _) where code == ErrorCode.withdrawn.rawValue && tag != 0:
                withdraw(tag)
            case .error(let code, _, let message):
                logger.warning("agent reported an error", metadata: ["error.code": "\(code)", "error": "\(message)"])
                return
            default:
                throw Refusal(code: .protocolViolation, message: "unexpected \(frame.type) frame from an agent")
            }
        }
    }

    /// ERROR 104 from the agent: it will send no DATA for this offer (the file changed after
    /// its seal). The offer is forgotten as when a newer one replaces it: a partial it began
    /// stays as a left-over; an unknown tag (answered already, or never offered) is ignored.
    private func withdraw(_ tag: UInt64) {
        guard let store = store, let t = transfers[tag] else { return }
        if t.fd != nil { store.leave(t.partialName, bytes: UInt64(max(0, t.written))) }
        t.retired = true
        transfers[tag] = nil
        stats.offersOpen(transfers.count)
        logger.debug("offer withdrawn by the agent", metadata: ["spool.name": "\(t.key.spool)", "segment.name": "\(t.key.name)"])
    }

    private func handleOffer(_ o: Offer) throws {
        guard let store = store else { return }
        do {
            try Names.validateIdentifier(o.key.spool, what: "spool name")
            try Names.validateSegmentName(o.key.name)
        } catch {
            throw Refusal(code: .badName, tag: o.tag, message: "\(error)")
        }
        guard o.key.size <= config.largestSegment else {
            throw Refusal(code: .tooLarge, tag: o.tag, message: "segment \(o.key.spool)/\(o.key.name) claims \(o.key.size) bytes, more than the maximum of \(config.largestSegment)")
        }
        guard transfers[o.tag] == nil else {
            throw Refusal(code: .protocolViolation, tag: o.tag, message: "tag \(o.tag) offered twice")
        }
        guard transfers.count < Int(config.window) else {
            throw Refusal(code: .protocolViolation, tag: o.tag, message: "more than \(config.window) offers outstanding; the window is \(config.window)")
        }
        // The same segment offered again under a new tag (the agent sealed it again): the
        // newer offer replaces the older one, and its partial is kept.
        for (oldTag, t) in transfers where t.key == o.key {
            if t.fd != nil { store.leave(t.partialName, bytes: UInt64(max(0, t.written))) }
            // Retired, not closed: a checkpoint of it may be queued on the durability thread,
            // and must neither sync a closed descriptor nor unlink the name the new offer uses.
            // Its descriptor closes when the last reference goes.
            t.retired = true
            transfers[oldTag] = nil
        }
        if let broken = store.broken {
            throw Refusal(code: .internalError, tag: o.tag, message: broken)
        }
        if store.committedName(o.key) != nil {
            try send([.answer(tag: o.tag, status: .committed, offset: o.key.size)])
            return
        }
        if let name = try store.findOnDisk(o.key) {
            try store.record([LedgerEntry(key: o.key, stored: name, time: Int64(Date().timeIntervalSince1970))])
            logger.notice("segment found committed on disk; recorded it in the ledger", metadata: ["spool.name": "\(o.key.spool)", "segment.name": "\(name)"])
            try send([.answer(tag: o.tag, status: .committed, offset: o.key.size)])
            return
        }
        let pname = o.key.partialFileName
        let label = "\(store.partialPath)/\(pname)"
        var held: Int64 = 0
        var fd: OwnedFD?
        if let st = try Files.statAt(store.partialDir, pname, label: label), (st.st_mode & S_IFMT) == S_IFREG {
            // Resume: make what the partial holds durable first, so a cut costs only what was
            // in flight. A failed sync poisons the file (R2): discard it and start over.
            let f = try Files.openBeneath(store.partialDir, pname, O_RDWR, label: label)
            do {
                var size = Int64(try Files.fstat(f).st_size)
                if UInt64(size) > o.key.size {
                    // Longer than the segment: not ours to trust. Start over.
                    try Files.truncate(f, 0)
                    size = 0
                }
                try Files.fdatasync(f)
                try Files.fsync(store.partialDir)
                held = size
                fd = f
            } catch {
                logger.error("partial could not be made durable; discarding it", metadata: ["path": "\(label)", "error": "\(error)"])
                try? f.close()
                try Files.unlink(store.partialDir, pname, label: label)
                held = 0
                fd = nil
            }
            if held > 0 {
                logger.info("resuming segment", metadata: ["spool.name": "\(o.key.spool)", "segment.name": "\(o.key.name)", "offset": "\(held)"])
            }
        }
        // From here this segment's partial counts as on offer (at the segment's full size),
        // not as left over; if the offer is turned down, it is left over again.
        store.adopt(pname)
        func turnDown(_ code: ErrorCode, _ message: String) throws {
            try? fd?.close()
            if fd != nil { store.leave(pname, bytes: UInt64(held)) }
            // For this segment only: the connection and the transfers under way go on.
            try send([.error(code: code.rawValue, tag: o.tag, message: message)])
        }
        // The agent's partial limit: drop what it left behind, oldest first, before turning
        // an offer down.
        if config.maxPartialBytes > 0 {
            let limit = config.maxPartialBytes
            let onOffer = transfers.values.reduce(UInt64(0)) { $0 + $1.key.size }
            var total = store.leftoverBytes + onOffer + o.key.size
            // Left-overs are dropped only when that makes room: if the offers under way
            // already fill the limit, they are kept for the resends they may still save.
            if total > limit && onOffer + o.key.size <= limit {
                total -= min(total, store.dropLeftovers(freeing: total - limit, except: pname, logger: logger))
            }
            if total > limit {
                logger.notice("deferring a segment: the agent's unfinished data would pass its partial limit", metadata: [
                    "spool.name": "\(o.key.spool)", "segment.name": "\(o.key.name)", "bytes.unfinished": "\(total)", "bytes.limit": "\(limit)"])
                collector.stats.error(.partialLimit)
                try turnDown(.partialLimit, "agent \(store.id) has \(onOffer) bytes of segments on offer; with \(o.key.size) more it would pass the collector's limit of \(limit) bytes of unfinished data per agent; retry later")
                return
            }
        }
        // The free-space reserve: accept only what fits beside it, counting what the offers
        // already answered on this connection still have to bring.
        if config.freeSpaceReserve > 0, let free = Files.freeBytes(config.dataDir) {
            let needed = o.key.size - UInt64(held)
            let coming = transfers.values.reduce(UInt64(0)) { $0 + ($1.key.size - UInt64(max(0, min(Int64($1.key.size), $1.written)))) }
            if free < config.freeSpaceReserve + needed + coming {
                logger.warning("refusing a segment: not enough free space above the reserve", metadata: [
                    "spool.name": "\(o.key.spool)", "segment.name": "\(o.key.name)", "bytes.free": "\(free)", "bytes.needed": "\(needed + coming)", "bytes.reserve": "\(config.freeSpaceReserve)"])
                collector.stats.error(.noSpace)
                try turnDown(.noSpaceRetry, "no space on the collector: \(free) bytes free, \(needed + coming) needed, \(config.freeSpaceReserve) kept in reserve; retry later")
                return
            }
        }
        transfers[o.tag] = Transfer(tag: o.tag, key: o.key, label: label, fd: fd, held: held)
        stats.offersOpen(transfers.count)
        // Counted once the offer is taken (a deferred one is counted when it is taken later),
        // as the agent counts it when it hears this answer.
        if held > 0 { collector.stats.resumed(bytes: UInt64(held)) }
        try send([.answer(tag: o.tag, status: .sendFrom, offset: UInt64(held))])
    }

    private func handleData(tag: UInt64, offset: UInt64, length: UInt64) throws {
        guard let store = store, let t = transfers[tag] else {
            throw Refusal(code: .protocolViolation, tag: tag, message: "DATA for tag \(tag), which is not an open offer")
        }
        let expected = t.written
        guard offset == UInt64(expected) else {
            throw Refusal(code: .protocolViolation, tag: tag, message: "DATA for \(t.key.name) starts at offset \(offset), expected \(expected)")
        }
        // Written so that a hostile length cannot overflow the sum.
        guard length <= t.key.size, offset <= t.key.size - length else {
            throw Refusal(code: .protocolViolation, tag: tag, message: "DATA for \(t.key.name) runs past its size \(t.key.size)")
        }
        if t.fd == nil {
            t.fd = try Files.openBeneath(store.partialDir, t.partialName, O_RDWR | O_CREAT | O_TRUNC, mode: 0o644, label: t.label)
            t.directorySynced = false
        }
        if length > 0 {
            guard let splicer = splicer, let fd = t.fd else { return }
            var counted = Int64(offset)
            defer {
                // What landed, whatever stopped the splice.
                let n = UInt64(max(0, t.written - counted))
                if n > 0 { stats.received(bytes: n); collector.stats.received(bytes: n) }
            }
            do {
                try splicer.receive(from: socket, into: fd, at: Int64(offset), count: Int64(length)) { reached in
                    t.written = reached
                    let n = UInt64(max(0, reached - counted))
                    counted = reached
                    stats.received(bytes: n)
                    collector.stats.received(bytes: n)
                    maybeCheckpoint(t, reached: reached)
                }
            } catch let e as SyscallError where e.isNoSpace {
                // Keep what landed: the next offer makes it durable and resumes from there.
                throw e
            }
            if t.poisoned {
                throw Refusal(code: .ioError, tag: tag, message: "could not make \(t.key.name) durable; offer it again")
            }
        }
        if UInt64(t.written) == t.key.size {
            transfers[tag] = nil
            stats.offersOpen(transfers.count)
            enqueue(.commit(t))
        }
    }

    private func maybeCheckpoint(_ t: Transfer, reached: Int64) {
        let now = monotonicNow()
        guard !t.checkpointPending,
              reached - t.lastCheckpointRequest >= config.checkpointBytes
                || (now - t.lastCheckpointTime >= config.checkpointInterval && reached > t.lastCheckpointRequest)
        else { return }
        t.lastCheckpointRequest = reached
        t.lastCheckpointTime = now
        t.checkpointPending = true
        enqueue(.checkpoint(t))
    }

    private func enqueue(_ job: Job) {
        jobs.lock()
        queue.append(job)
        jobs.signal()
        jobs.unlock()
    }

    // MARK: durability thread

    private func durabilityLoop() {
        defer { workerDone.open() }
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
            if !commits.isEmpty { commit(commits) }
        }
    }

    /// Syncs what the partial holds and tells the agent. R1: the offset acknowledged is what
    /// the file held before the fdatasync began, never more.
    private func checkpoint(_ t: Transfer) {
        defer { t.checkpointPending = false }
        guard let store = store, let fd = t.fd, !t.poisoned, !t.retired else { return }
        let reached = t.written
        guard reached > t.synced else { return }
        do {
            let syncStart = monotonicNow()
            defer { collector.stats.fsync(.partial, seconds: monotonicNow() - syncStart) }
            try Files.fdatasync(fd)
            if !t.directorySynced {
                try Files.fsync(store.partialDir)
                t.directorySynced = true
            }
            t.synced = reached
            // The checksum trails the transfer here, off the reader's thread, so the commit
            // only has the tail left to read.
            try Files.checksum(fd, from: t.crcOffset, to: reached, into: &t.crc)
            t.crcOffset = reached
        } catch {
            logger.error("checkpoint sync failed; the partial is poisoned", metadata: ["path": "\(t.label)", "error": "\(error)"])
            collector.stats.error(.sync)
            t.poisoned = true
            // R2: its name goes now, not at the end of the connection, so that no later offer
            // (after a crash, say) can find it, sync it again and trust it. The reader finishes
            // the frame into the nameless file. (A retired transfer's file is the newer
            // offer's: it is that one's to judge.)
            if !t.retired { _ = try? Files.unlink(store.partialDir, t.partialName, label: t.label) }
            return
        }
        // A failed send means the connection is going away; the partial stays good.
        try? send([.checkpoint(tag: t.tag, offset: UInt64(reached))])
    }

    /// Group commit: fdatasync and verify each segment, rename each into place, then sync
    /// each touched directory once and the ledger once, then acknowledge them all.
    private func commit(_ batch: [Transfer]) {
        guard let store = store else { return }
        var done: [(Transfer, String)] = []
        var replies: [Frame] = []
        var dirs: [String: OwnedFD] = [:]
        let started = monotonicNow()
        // Every file gets its own fdatasync, all of them at once (see SyncPool).
        let fds = batch.compactMap { $0.poisoned ? nil : $0.fd }
        let syncErrors = SyncPool.shared.fdatasyncAll(fds, timed: { [collector] seconds in collector.stats.fsync(.partial, seconds: seconds) })
        let synced = monotonicNow()
        var tailBytes: Int64 = 0
        var syncError: [ObjectIdentifier: SyscallError] = [:]
        for (fd, e) in zip(fds, syncErrors) { if let e = e { syncError[ObjectIdentifier(fd)] = e } }
        for t in batch {
            do {
                guard !t.poisoned else { throw SyscallError(call: "fdatasync", path: t.label, errno: EIO) }
                guard let fd = t.fd else { throw DaemonError("no partial file for \(t.key.name)") }
                if let e = syncError[ObjectIdentifier(fd)] { throw e }
                tailBytes += Int64(t.key.size) - t.crcOffset
                try Files.checksum(fd, from: t.crcOffset, to: Int64(t.key.size), into: &t.crc)
                t.crcOffset = Int64(t.key.size)
                try fd.close()
                t.fd = nil
                guard t.crc.value == t.key.crc else {
                    logger.error("checksum mismatch; discarding the partial", metadata: [
                        "spool.name": "\(t.key.spool)", "segment.name": "\(t.key.name)",
                        "crc.expected": "\(hex32(t.key.crc))", "crc.received": "\(hex32(t.crc.value))"])
                    try? Files.unlink(store.partialDir, t.partialName, label: t.label)
                    collector.stats.error(.checksum)
                    replies.append(.error(code: ErrorCode.checksumMismatch.rawValue, tag: t.tag,
                                          message: "checksum mismatch for \(t.key.spool)/\(t.key.name): expected \(hex32(t.key.crc)), received \(hex32(t.crc.value)); send it again"))
                    continue
                }
                let dir = try store.spoolDir(t.key.spool)
                let name = try store.commitName(t.partialName, spool: t.key.spool, name: t.key.name, into: dir)
                if name != t.key.name {
                    logger.warning("name already taken by a different file; committed under another name", metadata: [
                        "spool.name": "\(t.key.spool)", "segment.name": "\(t.key.name)", "stored.name": "\(name)"])
                }
                dirs[t.key.spool] = dir
                done.append((t, name))
            } catch {
                // R2: an fsync or close error poisons the file; discard it, the agent resends.
                logger.error("commit failed; discarding the partial", metadata: ["path": "\(t.label)", "error": "\(error)"])
                collector.stats.error((error as? SyscallError).map { ["fdatasync", "fsync", "close"].contains($0.call) } == true ? .sync : .commit)
                try? t.fd?.close()
                t.fd = nil
                try? Files.unlink(store.partialDir, t.partialName, label: t.label)
                replies.append(.error(code: ErrorCode.ioError.rawValue, tag: t.tag, message: "could not commit \(t.key.spool)/\(t.key.name): \(error); send it again"))
            }
        }
        do {
            for dir in dirs.values { try Files.fsync(dir) }
        } catch {
            // R2: the new directory entries are not known durable, and a second fsync would
            // not prove they are. Take the files back out and have the agent send them again.
            logger.error("directory sync failed at commit; discarding the batch", metadata: ["error": "\(error)"])
            collector.stats.error(.commit)
            for (t, name) in done {
                if let dir = dirs[t.key.spool] { try? Files.unlink(dir, name, label: "\(store.agentPath)/\(t.key.spool)/\(name)") }
                replies.append(.error(code: ErrorCode.ioError.rawValue, tag: t.tag, message: "could not sync the commit of \(t.key.name): \(error); send it again"))
            }
            try? send(replies)
            return
        }
        do {
            let now = Int64(Date().timeIntervalSince1970)
            try store.record(done.map { LedgerEntry(key: $0.0.key, stored: $0.1, time: now) }) { [collector] in collector.stats.fsync(.ledger, seconds: $0) }
            let finished = monotonicNow()
            let bytes = done.reduce(UInt64(0)) { $0 + $1.0.key.size }
            collector.stats.committed(segments: done.count, bytes: bytes)
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
            collector.stats.error(.ledger)
            for (t, _) in done {
                replies.append(.error(code: ErrorCode.ioError.rawValue, tag: t.tag, message: "could not sync the commit of \(t.key.name): \(error); offer it again"))
            }
        }
        if !replies.isEmpty { try? send(replies) }
    }
}

extension FrameError {
    var isTooLarge: Bool { if case .tooLarge = self { return true }; return false }
}
