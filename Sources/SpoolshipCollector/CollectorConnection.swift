import Foundation
import Glibc
import Logging
import SpoolshipCore
import SpoolshipDaemon
import SpoolshipIO
import Synchronization

/// A protocol-level refusal: sent to the peer as an ERROR frame, then the connection closes.
struct Refusal: Error, CustomStringConvertible {
    var code: ErrorCode
    var tag: UInt64 = 0
    var message: String
    /// Already counted in the stats under a kind of its own.
    var counted = false
    var description: String { "\(code): \(message)" }
}

extension Refusal {
    /// One of admission's refusals, for the offer or DATA frame with `tag`.
    init(_ r: OfferAdmission.Refusal, tag: UInt64) {
        self.init(code: r.code, tag: tag, message: r.message)
    }
}

/// Sends frames to one agent, one batch at a time (the reader and durability threads both
/// send); the collector's preamble goes before its first frame, WELCOME or ERROR.
final class FrameSender: Sendable {
    private let linkBox: Mutex<Link>
    /// Whether the preamble went out; held across each send, so that sends never interleave.
    private let preambleSent = Mutex(false)

    init(socket: Socket) { linkBox = Mutex(Link(plain: socket)) }

    /// The connection: plain until a TLS handshake is over (`use`).
    var link: Link { linkBox.withLock { $0 } }
    /// After the TLS handshake, before any frame: everything goes over `link` from now on.
    func use(_ link: Link) { linkBox.withLock { $0 = link } }

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
        let bytes = w.bytes
        let link = self.link
        try preambleSent.withLock { sent in
            if !sent {
                sent = true
                try link.sendAll(Wire.preamble + bytes)
            } else {
                try link.sendAll(bytes)
            }
        }
    }

    /// Whether no send is under way now.
    var isIdle: Bool { preambleSent.withLockIfAvailable { _ in true } ?? false }
}

/// One agent's connection: TLS when configured and the handshake (ConnectionHandshake.swift),
/// then the reader loop here, which reads frames, answers offers (ConnectionAdmission.swift)
/// and splices DATA into partial files (over TLS: `Link.receiveFile`); a durability thread
/// (Durability.swift) checkpoints and commits them.
///
/// `@unchecked Sendable`: its `var`s are the reader thread's alone, the thread that runs
/// `run()` (the durability thread gets what it needs at its start, as `Durability`'s lets).
/// Other threads (the accept loop, a reload, a newer connection of the same agent, status)
/// call only `kill`, `supersede` and `closeIfRevoked`, which touch only lets of Sendable types.
final class CollectorConnection: @unchecked Sendable {
    let socket: Socket
    unowned let collector: Collector
    /// The settings when the connection was accepted.
    let config: CollectorConfig
    let sender: FrameSender
    /// This connection's figures, for status.
    let stats: ConnectionStats
    /// The agent that authenticated on this connection (nil without --agents).
    let authenticated = Locked<String?>(nil)
    /// The agent id, once the handshake is over (for `supersede`, on another connection's thread).
    private let agentID = Locked<String?>(nil)
    /// When the agent was last heard from (a frame read): a second connection with the same id
    /// is refused while this one is alive (`AgentStore.claim`).
    private let heard = Locked<Double>(monotonicNow())

    // The reader thread's:
    var logger: Logger
    var store: AgentStore?
    var transfers = OpenTransfers()
    private var splicer: Splicer?
    private(set) var durability: Durability?
    /// During the handshake, when the whole of it must have arrived.
    var frameDeadline: Double?

    init(socket: Socket, collector: Collector) {
        self.socket = socket
        self.collector = collector
        config = collector.config
        sender = FrameSender(socket: socket)
        stats = ConnectionStats(address: socket.peer)
        var l = collector.logger
        l[metadataKey: "peer"] = "\(socket.peer)"
        logger = l
    }

    func kill() { socket.shutdown() }

    /// Another connection presented this agent's id and takes over: this one is told why
    /// (ERROR 10, so that a twin agent says what is wrong) and closed.
    func supersede(by peer: String) {
        let id = agentID.withLock { $0 } ?? "?"
        collector.logger.warning("agent id connected again from elsewhere; closing this connection (a restart, or two agents with one id?)",
                                 metadata: ["peer": "\(socket.peer)", "agent.id": "\(id)", "other.peer": "\(peer)"])
        // Only if no send of this connection is under way: one blocked on a dead peer would hold
        // the newcomer up until its deadline.
        if sender.isIdle {
            try? send([.error(code: ErrorCode.agentIDInUse.rawValue, tag: 0,
                              message: "agent id \(id) connected again from \(peer); closing this connection (two agents configured with one id?)")])
        }
        socket.shutdown()
    }

    func closeIfRevoked(_ agents: [String: [UInt8]]) {
        guard let id = authenticated.withLock({ $0 }), agents[id] == nil else { return }
        collector.logger.warning("closing the connection of an agent removed from the agents file", metadata: ["peer": "\(socket.peer)", "agent.id": "\(id)"])
        kill()
    }

    func send(_ frames: [Frame]) throws { try sender.send(frames) }

    func run() {
        socket.setTimeouts(receive: config.handshakeTimeout, send: config.idleTimeout)
        socket.setNoDelay()
        var claimed = false
        var welcomed = false
        let me = ObjectIdentifier(self)
        do {
            let deadline = monotonicNow() + config.handshakeTimeout
            if let (settings, context) = collector.tls { try secure(context, settings, deadline: deadline) }
            let store = try handshake(deadline: deadline)
            self.store = store
            agentID.withLock { $0 = store.id }
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
            logger.info("agent connected", metadata: ["agent.id": "\(store.id)", "transport": "\(sender.link.transport)"])
            welcomed = true
            let d = Durability(store: store, logger: logger, sender: sender, collectorStats: collector.stats, stats: stats, config: config)
            durability = d
            d.start(name: "durability \(socket.peer)")
            sender.link.setTimeouts(receive: config.idleTimeout, send: config.idleTimeout)
            try readLoop()
            logger.info("agent disconnected")
        } catch let r as Refusal {
            logger.warning("refusing peer", metadata: ["error.code": "\(r.code)", "error": "\(r.message)"])
            if !r.counted { collector.stats.error(Self.errorKind(r, welcomed: welcomed)) }
            try? send([.error(code: r.code.rawValue, tag: r.tag, message: r.message)])
        } catch let e as SyscallError where e.errno == ECONNRESET || e.errno == EPIPE || e.errno == ETIMEDOUT {
            logger.notice("connection ended", metadata: ["error": "\(e)"])
            // A peer that closes before its first byte (a TCP health check, a port scan) is
            // not an error.
            if e.path?.hasSuffix("(closed before hello)") != true {
                collector.stats.error(welcomed ? .connection : .handshake)
            }
        } catch let e as TLSError {
            // Nothing more can be said over a TLS connection that failed: OpenSSL sent the
            // alert, if any.
            logger.warning(welcomed ? "TLS error; closing the connection" : "TLS handshake failed", metadata: ["error": "\(e)"])
            collector.stats.error(welcomed ? .connection : .handshake)
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
        durability?.finish()
        for t in transfers.all {
            let hadFile = t.file.isOpen && !t.file.isUnnamed
            try? t.file.close()
            guard let s = store, !t.file.isUnnamed else { continue }
            if t.poisoned {
                _ = try? Files.unlink(s.partialDir, t.partialName, label: t.label)
            } else if hadFile {
                s.leave(t.partialName, bytes: UInt64(max(0, t.written)))
            }
        }
        transfers.removeAll()
        if claimed, let s = store { s.release(me) }
        sender.link.lingeringClose()
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

    // MARK: reader

    func readFrame() throws -> Frame {
        let link = sender.link
        guard let header = try link.receiveExactly(Wire.headerSize, deadline: frameDeadline) else {
            throw SyscallError(call: "recv", path: "\(socket.peer) (closed)", errno: ECONNRESET)
        }
        do {
            let (type, length) = try FrameCodec.parseHeader(header, maxBody: config.maxFrameBody)
            // Once its header is in, a frame's body must follow within the idle deadline
            // (the handshake's own deadline if sooner): no trickling.
            let bodyDeadline = min(frameDeadline ?? .infinity, monotonicNow() + config.idleTimeout)
            let body = length == 0 ? [] : (try link.receiveExactly(length, deadline: bodyDeadline) ?? [])
            guard body.count == length else { throw SyscallError(call: "recv", path: "\(socket.peer) (closed mid-frame)", errno: ECONNRESET) }
            return try FrameCodec.parseBody(type, body[...])
        } catch let e as FrameError {
            throw Refusal(code: e.isTooLarge ? .tooLarge : .protocolViolation, message: e.description)
        }
    }

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
        if t.file.isOpen && !t.file.isUnnamed { store.leave(t.partialName, bytes: UInt64(max(0, t.written))) }
        t.retired = true
        transfers[tag] = nil
        stats.offersOpen(transfers.count)
        logger.debug("offer withdrawn by the agent", metadata: ["spool.name": "\(t.key.spool)", "segment.name": "\(t.key.name)"])
    }

    /// DATA: checked against the offer (`OfferAdmission.checkData`), then spliced from the
    /// socket into the partial file; a checkpoint is asked for as bytes land, and the commit
    /// once the segment is whole.
    private func handleData(tag: UInt64, offset: UInt64, length: UInt64) throws {
        let t = transfers[tag]
        if let r = OfferAdmission.checkData(tag: tag, offset: offset, length: length, open: t.map { ($0.key, UInt64($0.written)) }) {
            throw Refusal(r, tag: tag)
        }
        guard let store = store, let t = t, let durability = durability else { return }
        try t.file.openIfNeeded(in: store.partialDir)
        if length > 0 {
            guard let splicer = splicer, let fd = t.file.descriptor else { return }
            var counted = Int64(offset)
            defer {
                // What landed, whatever stopped the splice.
                let n = UInt64(max(0, t.written - counted))
                if n > 0 { stats.received(bytes: n); collector.stats.received(bytes: n) }
            }
            do {
                try sender.link.receiveFile(into: fd, at: Int64(offset), count: Int64(length), splicer: splicer) { reached in
                    t.written = reached
                    transfers.received(t, upTo: reached)
                    let n = UInt64(max(0, reached - counted))
                    counted = reached
                    stats.received(bytes: n)
                    collector.stats.received(bytes: n)
                    durability.checkpointIfDue(t, reached: reached)
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
            durability.commit(t)
        }
    }
}

extension FrameError {
    var isTooLarge: Bool { if case .tooLarge = self { return true }; return false }
}
