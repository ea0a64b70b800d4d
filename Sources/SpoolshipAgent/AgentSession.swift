import Foundation
import Glibc
import Logging
import SpoolshipCore
import SpoolshipIO
import SpoolshipDaemon

/// One connection to the collector, plain or TLS (`Link`). The calling thread sends (offers,
/// then DATA frames with sendfile, or over TLS `SSL_sendfile` or pread + `SSL_write`, as
/// answers come back); a reader thread takes answers, checkpoints and commit
/// acknowledgements, and processes acknowledgements in batches. It talks to the agent's
/// segment queue only; what becomes of a segment that cannot ship as sealed is the agent's
/// to say (`Agent.drop`, `refuse`, `sealAgain`), never sealed here.
///
/// `@unchecked Sendable`: every stored `var` is read and written only while holding `cond`
/// (the sender and the reader share them); the `let`s are Sendable.
final class AgentSession: @unchecked Sendable {
    unowned let agent: Agent
    let logger: Logger
    private let cond = NSCondition()
    // Under `cond`:
    private var inflight: [UInt64: UInt64] = [:]      // tag -> segment id
    private var sendQueue: [(tag: UInt64, offset: UInt64)] = []
    /// Offers to withdraw (ERROR 104): answered, but their segment is gone before any DATA.
    private var withdrawals: [UInt64] = []
    private var nextTag: UInt64 = 1
    private var failure: Error?
    private var window = 64
    private var lastHeard = monotonicNow()
    private var outcome = Outcome()

    /// How the connection went, for the agent's backoff and its error counts.
    struct Outcome: Sendable {
        /// Whether the collector answered, checkpointed or acknowledged anything.
        var madeProgress = false
        /// Whether the handshake was over (for the kind of error a failure counts as).
        var established = false
        /// Whether the collector ended the connection with an ERROR frame.
        var refusedByCollector = false
        /// The collector refused the connection because another live connection holds this
        /// agent's id (ERROR 10): two agents with one id.
        var idInUse = false
    }

    /// Read by the agent once `run` returned.
    var result: Outcome { locked { outcome } }

    init(agent: Agent) {
        self.agent = agent
        logger = agent.logger
    }

    var config: AgentConfig { agent.config }
    var queue: SegmentQueue { agent.queue }
    private func locked<R>(_ body: () throws -> R) rethrows -> R {
        cond.lock()
        defer { cond.unlock() }
        return try body()
    }
    /// Wakes the sender (new offers, a stop).
    private func wake() { cond.lock(); cond.broadcast(); cond.unlock() }

    func run() throws {
        let sock = try Socket.connect(config.collector, timeout: config.connectTimeout)
        // A stop shuts this socket down at once: a DATA frame under way is cut, and the
        // collector keeps what arrived (the next start resumes from it).
        agent.connection.hold(sock)
        defer {
            agent.connection.release()
            sock.shutdown()
            try? sock.fd.close()
        }
        let link = try secure(sock)
        // The reader wakes at half the deadline to check for silence, so a vanished peer is
        // noticed within 1.5 deadlines; a sendfile blocked on it is then woken by shutdown.
        link.setTimeouts(receive: config.ioTimeout / 2, send: config.ioTimeout)
        var decoder = FrameDecoder(maxBody: Wire.defaultMaxFrameBody)
        var hello = FrameWriter()
        let nonce = config.secret == nil ? [] : Auth.nonce()
        hello.append(.hello(Hello(agentID: config.agentID, auth: nonce)))
        try link.sendAll(Wire.preamble + hello.bytes)
        let welcome = try readWelcome(link, &decoder, nonce: nonce)
        window = Int(max(1, min(welcome.window, 4096)))
        logger.info("connected to collector", metadata: ["collector": "\(config.collector)", "collector.id": "\(welcome.collectorID)",
                                                         "transport": "\(link.transport)", "path": "\(link.path(sending: true).rawValue)"])
        locked { outcome.established = true }
        agent.stats.connected()
        agent.health.update {
            $0.connectedTo = welcome.collectorID
            $0.connectedSince = Date().timeIntervalSince1970
            $0.transport = link.transport
            $0.path = link.path(sending: true)
        }
        defer { agent.health.update { $0.connectedTo = nil; $0.connectedSince = nil; $0.transport = nil; $0.path = nil } }
        // Everything not yet acknowledged is offered again on a new connection. (A welcome
        // alone is not progress: a collector that accepts and then fails every offer must not
        // keep `--once` alive forever.)
        queue.offerAllAgain()
        queue.onChange { [self] in wake() }
        defer { queue.onChange(nil) }
        let readerDone = Latch()
        // What the handshake read past WELCOME goes to the reader with the decoder.
        let handedOver = decoder
        startThread("reader \(config.collector)") { [self] in
            readLoop(link, handedOver)
            readerDone.open()
        }
        defer {
            link.tls?.close()
            link.shutdown()
            readerDone.wait(timeout: 60)
        }
        try sendLoop(link, maxSegment: welcome.maxSegmentSize)
    }

    /// The link over `sock`: plain, or TLS after its handshake (within the I/O timeout) when
    /// TLS is configured. A collector that answers TLS in plain text does not use TLS: that is
    /// a `FatalRefusal`, with what the collector said.
    private func secure(_ sock: Socket) throws -> Link {
        guard let settings = config.tls else { return Link(plain: sock) }
        guard let context = agent.tlsContext() else {
            throw DaemonError("TLS is configured, but its files were not read (no TLS context); not connecting in plain text")
        }
        let tls = try TLSConnection(context, socket: sock)
        do {
            try tls.handshake(deadline: monotonicNow() + config.ioTimeout)
        } catch let plain as TLSPlainPeer {
            throw FatalRefusal(description: Self.plainCollector(config.collector, plain))
        }
        if settings.kernelTLS == .require && !tls.kernelSend {
            throw DaemonError("ktls = require, but the kernel did not take the send keys of this connection (\(tls.agreed))")
        }
        return Link(tls: tls)
    }

    /// What to say when the collector answered the TLS handshake in plain text: its own
    /// words when they are a spoolship ERROR frame (OpenSSL took "SPSH" and the first byte
    /// of the frame, the high byte of its length, as a record header).
    static func plainCollector(_ collector: Endpoint, _ p: TLSPlainPeer) -> String {
        var decoder = FrameDecoder(maxBody: Wire.defaultMaxFrameBody)
        decoder.feed(Wire.preamble + [0] + p.following)
        var said = ""
        if case .error(_, _, let message)? = try? decoder.next() { said = ": it says: \(message)" }
        return "collector \(collector) does not use TLS, and this agent does (it answered the TLS handshake in plain text)\(said)"
    }

    private func readWelcome(_ sock: Link, _ decoder: inout FrameDecoder, nonce: [UInt8]) throws -> Welcome {
        var authenticated = false
        while true {
            if let f = try decoder.next() {
                switch f {
                case .challenge(let collectorNonce, let proof):
                    guard let secret = config.secret else {
                        throw FatalRefusal(description: "collector \(config.collector) requires credentials; give this agent --secret-file")
                    }
                    guard !authenticated, collectorNonce.count == Auth.nonceSize,
                        Auth.same(proof, Auth.collectorProof(secret: secret, agentID: config.agentID, agentNonce: nonce, collectorNonce: collectorNonce))
                    else {
                        // Say so to the peer (the collector logs it), without a proof of ours.
                        var e = FrameWriter()
                        e.append(.error(code: ErrorCode.authentication.rawValue, tag: 0, message: "the collector's proof does not match this agent's secret"))
                        try? sock.sendAll(e.bytes)
                        throw FatalRefusal(description: "collector \(config.collector) could not prove that it holds this agent's secret (a different secret on either side, or not the collector meant)")
                    }
                    var w = FrameWriter()
                    w.append(.auth(proof: Auth.agentProof(secret: secret, agentID: config.agentID, agentNonce: nonce, collectorNonce: collectorNonce)))
                    try sock.sendAll(w.bytes)
                    authenticated = true
                case .welcome(let w):
                    if config.secret != nil && !authenticated {
                        throw FatalRefusal(description: "collector \(config.collector) did not check this agent's credentials; refusing to ship to a collector that cannot prove it holds the secret (start it with --agents)")
                    }
                    return w
                case .error(let code, _, let message):
                    locked { outcome.refusedByCollector = true }
                    let c = ErrorCode(rawValue: code)
                    if c == .authentication || c == .unsupportedVersion || c == .badName {
                        throw FatalRefusal(description: "collector \(config.collector) refused this agent: \(message)")
                    }
                    if c == .agentIDInUse { locked { outcome.idInUse = true } }
                    throw DaemonError("collector \(config.collector) refused the connection: \(message)")
                default: throw DaemonError("collector sent \(f.type) before WELCOME")
                }
            }
            let bytes = try sock.receive(max: 4096)
            if bytes.isEmpty { throw DaemonError("collector \(config.collector) closed the connection during the handshake") }
            decoder.feed(bytes)
        }
    }

    private func fail(_ e: Error) {
        cond.lock()
        if failure == nil { failure = e }
        cond.broadcast()
        cond.unlock()
    }

    // MARK: sending

    private func sendLoop(_ sock: Link, maxSegment: UInt64) throws {
        var lastSent = monotonicNow()
        while true {
            var offers: [Frame] = []
            var sends: [(tag: UInt64, offset: UInt64, segment: Segment)] = []
            var ping = false
            var tooLarge: [Segment] = []
            cond.lock()
            while true {
                if let f = failure { cond.unlock(); throw f }
                if agent.threads.isStopped { cond.unlock(); return }
                if config.once && agent.everythingShipped { cond.unlock(); return }
                if config.once && !agent.blobs.isScanning && queue.sinceProgress > config.timeout {
                    // checkFinished reports it, with the segments still pending.
                    cond.unlock()
                    return
                }
                let canOffer = inflight.count < window && queue.hasOffers
                if canOffer || !sendQueue.isEmpty || !withdrawals.isEmpty { break }
                let idle = monotonicNow() - lastSent
                if idle >= config.ioTimeout / 3 { ping = true; break }
                if !inflight.isEmpty && monotonicNow() - lastHeard > config.ioTimeout {
                    cond.unlock()
                    throw DaemonError("no word from collector \(config.collector) for \(Int(config.ioTimeout)) s with \(inflight.count) segment(s) outstanding")
                }
                agent.threads.heartbeats.beat("shipper")
                _ = cond.wait(until: Date(timeIntervalSinceNow: min(1, max(0.05, config.ioTimeout / 3 - idle))))
            }
            for s in queue.nextOffers(max: window - inflight.count) {
                if s.size > maxSegment {
                    tooLarge.append(s)
                    continue
                }
                let tag = nextTag
                nextTag += 1
                inflight[tag] = s.id
                offers.append(.offer(Offer(tag: tag, kind: s.kind, key: s.key)))
            }
            for q in sendQueue {
                if let id = inflight[q.tag], let s = queue.segment(id) {
                    sends.append((q.tag, q.offset, s))
                } else {
                    // Forgotten since the answer (dropped, refused): the collector holds the
                    // offer open until told.
                    inflight[q.tag] = nil
                    withdrawals.append(q.tag)
                }
            }
            sendQueue.removeAll()
            for tag in withdrawals { offers.append(Self.withdrawal(tag)) }
            withdrawals.removeAll()
            if ping && offers.isEmpty && sends.isEmpty && inflight.isEmpty { lastHeard = monotonicNow() }
            cond.unlock()
            for s in tooLarge {
                agent.refuse(s.id, reason: "\(s.size) bytes is more than the collector's maximum segment size of \(maxSegment)")
            }

            var w = FrameWriter()
            for o in offers { w.append(o) }
            if ping && offers.isEmpty && sends.isEmpty { w.append(.ping(UInt64(nextTag))) }
            if !w.bytes.isEmpty {
                try sock.sendAll(w.bytes)
                lastSent = monotonicNow()
            }
            for s in sends {
                try sendData(sock, tag: s.tag, offset: s.offset, segment: s.segment)
                lastSent = monotonicNow()
            }
        }
    }

    private func sendData(_ sock: Link, tag: UInt64, offset: UInt64, segment s: Segment) throws {
        if s.isFollowed { return try sendRange(sock, tag: tag, offset: offset, segment: s) }
        guard let dir = agent.dirs.holding(s) else { return }
        let label = "\(s.spool)/\(s.name)"
        guard let fd = try Files.openIfPresent(dir, s.name, label: label) else {
            locked { inflight[tag] = nil }
            var w = FrameWriter()
            w.append(Self.withdrawal(tag))
            try sock.sendAll(w.bytes)
            agent.drop(s.id, reason: "the file was deleted before it was shipped")
            return
        }
        let st = try Files.fstat(fd)
        guard s.isSealed(st) else {
            // Changed after it was sealed: withdraw the offer, drop this seal; the file is
            // sealed again as it is now.
            locked { inflight[tag] = nil }
            var w = FrameWriter()
            w.append(Self.withdrawal(tag))
            try sock.sendAll(w.bytes)
            agent.sealAgain(s, reason: "the file changed after it was sealed; sealing it again")
            return
        }
        try sendBytes(sock, tag: tag, fd: fd, from: offset, count: s.size - offset, offset: offset)
    }

    /// DATA for a range of a followed file, read from the follower's descriptor of the file
    /// (held whatever became of its name). A file truncated under the range since it was cut
    /// no longer holds its bytes: the offer is withdrawn and the bytes counted lost.
    private func sendRange(_ sock: Link, tag: UInt64, offset: UInt64, segment s: Segment) throws {
        let start = s.offset ?? 0
        guard let fd = agent.follower.source(of: s) else {
            locked { inflight[tag] = nil }
            var w = FrameWriter()
            w.append(Self.withdrawal(tag))
            try sock.sendAll(w.bytes)
            agent.follower.lost(s, why: "its file no longer holds it (truncated or rewritten under it, or gone while the agent was down) and no copy of it was found")
            return
        }
        try sendBytes(sock, tag: tag, fd: fd, from: start + offset, count: s.size - offset, offset: offset)
    }

    /// One DATA frame: its header, then `count` bytes of `fd` from file offset `from` with
    /// sendfile (`offset`: where they start in the segment).
    private func sendBytes(_ sock: Link, tag: UInt64, fd: OwnedFD, from: UInt64, count: UInt64, offset: UInt64) throws {
        var w = FrameWriter()
        w.append(.data(tag: tag, offset: offset, length: count))
        try sock.sendAll(w.bytes)
        // In slices, so that a long transfer on a slow link still shows progress to the watchdog.
        var sent: UInt64 = 0
        while sent < count {
            let n = min(count - sent, 2 << 20)
            try sock.sendFile(fd, offset: Int64(from + sent), count: Int64(n))
            sent += n
            agent.stats.sent(bytes: n)
            agent.threads.heartbeats.beat("shipper")
        }
    }

    static func withdrawal(_ tag: UInt64) -> Frame {
        .error(code: ErrorCode.withdrawn.rawValue, tag: tag, message: "the file changed or went away before its data was sent")
    }

    // MARK: receiving

    private func readLoop(_ sock: Link, _ initial: FrameDecoder) {
        var decoder = initial
        do {
            while true {
                var acks: [(UInt64, String)] = []
                var frames: [Frame] = []
                while let f = try decoder.next() { frames.append(f) }
                for f in frames { try handle(f, &acks) }
                if !acks.isEmpty { acknowledge(acks) }
                guard let bytes = try receive(sock) else { continue }
                if bytes.isEmpty { throw DaemonError("collector \(config.collector) closed the connection") }
                locked { lastHeard = monotonicNow() }
                decoder.feed(bytes)
            }
        } catch {
            fail(error)
            // Wake the sender if it is blocked in sendfile towards a peer that vanished.
            sock.shutdown()
        }
    }

    /// What arrived, or nil when the receive deadline passed without anything being owed.
    private func receive(_ sock: Link) throws -> [UInt8]? {
        do {
            return try sock.receive(max: 64 * 1024)
        } catch let e as SyscallError where e.errno == ETIMEDOUT {
            let silent = locked { !inflight.isEmpty && monotonicNow() - lastHeard > config.ioTimeout }
            if silent { throw DaemonError("no word from collector \(config.collector) for \(Int(config.ioTimeout)) s") }
            return nil
        }
    }

    private func handle(_ f: Frame, _ acks: inout [(UInt64, String)]) throws {
        switch f {
        case .answer(let tag, let status, let offset):
            cond.lock()
            defer { cond.unlock() }
            guard let id = inflight[tag], let s = queue.segment(id) else { return }
            if status == .committed {
                // An answer to send is not progress yet (a full collector disk answers, then
                // fails): only durable bytes and commits are.
                queue.progressed()
                outcome.madeProgress = true
                acks.append((tag, s.name))
            } else {
                guard offset <= s.size else { throw DaemonError("collector answered offset \(offset) for \(s.name), beyond its size \(s.size)") }
                if offset > 0 {
                    logger.info("resuming segment", metadata: ["spool.name": "\(s.spool)", "segment.name": "\(s.name)", "offset": "\(offset)"])
                    agent.stats.resumed(bytes: offset)
                }
                sendQueue.append((tag, offset))
                cond.broadcast()
            }
        case .checkpoint:
            queue.progressed()
            locked { outcome.madeProgress = true }
        case .committed(let tag, let stored):
            queue.progressed()
            locked { outcome.madeProgress = true }
            acks.append((tag, stored))
        case .pong:
            break
        case .error(let code, let tag, let message):
            let c = ErrorCode(rawValue: code)
            if c == .agentIDInUse { locked { outcome.idInUse = true } }
            if tag != 0, let c = c, c.retryLater {
                // No room at the collector for now: keep the file, offer it again later.
                logger.warning("collector cannot take a segment now; offering it again later", metadata: ["error.code": "\(c)", "error": "\(message)"])
                agent.stats.error(.deferred)
                let id: UInt64? = locked { inflight.removeValue(forKey: tag) }
                if let id = id { queue.offerLater(id) }
                return
            }
            if tag != 0, let c = c, !c.closesConnection {
                // One segment failed at the collector: offer it again (re-sealed if its
                // checksum did not match).
                logger.warning("collector could not commit a segment; offering it again", metadata: ["error.code": "\(c)", "error": "\(message)"])
                agent.stats.error(c == .checksumMismatch ? .checksum : .segment)
                let id: UInt64? = locked { inflight.removeValue(forKey: tag) }
                if let id = id, c == .checksumMismatch, let s = queue.segment(id) {
                    agent.sealAgain(s, reason: "checksum mismatch at the collector")
                } else if let id = id {
                    queue.offerFirst(id)
                }
                return
            }
            if (c == .badName || c == .tooLarge), tag != 0 {
                let id: UInt64? = locked { inflight.removeValue(forKey: tag) }
                if let id = id { agent.refuse(id, reason: message) }
            }
            locked { outcome.refusedByCollector = true }
            if c == .authentication || c == .unsupportedVersion {
                throw FatalRefusal(description: "collector \(config.collector) refused this agent: \(message)")
            }
            throw DaemonError("collector \(config.collector) reported \(c.map { "\($0)" } ?? "error \(code)"): \(message)")
        default:
            throw DaemonError("unexpected \(f.type) frame from the collector")
        }
    }

    private func acknowledge(_ acks: [(UInt64, String)]) {
        let ids: [(UInt64, String)] = locked {
            acks.compactMap { (tag, stored) in inflight.removeValue(forKey: tag).map { ($0, stored) } }
        }
        agent.reaper.reap(queue.acknowledged(ids))
        wake()
    }
}
