import Glibc
import SpoolshipCore
import SpoolshipDaemon
import SpoolshipIO

extension CollectorConnection {
    /// The handshake's I/O, on the reader thread: the preamble, then frames fed to the state
    /// machine (`CollectorHandshake`, in SpoolshipCore) and its answers sent, all within the
    /// handshake deadline. Returns the store of the agent accepted.
    func handshake(deadline: Double) throws -> AgentStore {
        // The whole handshake (TLS, preamble, HELLO and AUTH) within the handshake deadline,
        // counted from the accept.
        frameDeadline = deadline
        defer { frameDeadline = nil }
        let link = sender.link
        guard let pre = try link.receiveExactly(Wire.preamble.count, deadline: frameDeadline) else {
            throw SyscallError(call: "recv", path: "\(socket.peer) (closed before hello)", errno: ECONNRESET)
        }
        if link.tls == nil && Self.startsTLS(pre) {
            throw Refusal(code: .protocolViolation, message: "the agent started a TLS handshake, but this collector does not use TLS: give the collector tls.ca-file, tls.cert-file and tls.key-file, or take them from the agent")
        }
        guard pre == Wire.preamble else {
            throw Refusal(code: .protocolViolation, message: FrameError.badPreamble(pre).description)
        }
        // The rest is the state machine's (CollectorHandshake): this only reads and sends.
        var machine = CollectorHandshake(agents: collector.config.agents, certificateNames: link.tls?.peerNames())
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

    /// Whether `bytes` begin a TLS handshake record (content type 22, version 3.x).
    static func startsTLS(_ bytes: [UInt8]) -> Bool { bytes.count >= 2 && bytes[0] == 0x16 && bytes[1] == 0x03 }

    /// With TLS configured: the TLS handshake, before any frame, by `deadline` (the handshake
    /// deadline, which `handshake` goes on with).
    /// A peer whose first byte is the preamble's speaks plain text: it is refused in plain
    /// text, so that it can say why. With `ktls = require`, a connection whose receive keys
    /// the kernel did not take is refused (over TLS).
    func secure(_ context: TLSContext, _ settings: TLSSettings, deadline: Double) throws {
        guard let first = try Self.peekFirstByte(socket, deadline: deadline) else {
            throw SyscallError(call: "recv", path: "\(socket.peer) (closed before hello)", errno: ECONNRESET)
        }
        if first == Wire.preamble[0] {
            throw Refusal(code: .authentication, message: "this collector requires TLS, and the agent connected without it: give the agent tls.ca-file, tls.cert-file and tls.key-file")
        }
        let tls = try TLSConnection(context, socket: socket)
        try tls.handshake(deadline: deadline)
        let link = Link(tls: tls)
        link.setTimeouts(receive: config.handshakeTimeout, send: config.idleTimeout)
        sender.use(link)
        stats.secured(link)
        logger[metadataKey: "path"] = "\(link.path(sending: false).rawValue)"
        if settings.kernelTLS == .require && !tls.kernelReceive {
            throw Refusal(code: .internalError, message: "ktls = require at the collector, but the kernel did not take the receive keys of this connection (\(tls.agreed))")
        }
    }

    /// The first byte the peer sends, without taking it; nil when it closes first. Waits
    /// until `deadline` (then ETIMEDOUT).
    static func peekFirstByte(_ socket: Socket, deadline: Double) throws -> UInt8? {
        while true {
            let left = deadline - monotonicNow()
            if left <= 0 { throw SyscallError(call: "recv", path: "\(socket.peer) (deadline passed before its first byte)", errno: ETIMEDOUT) }
            var p = pollfd(fd: socket.fd.raw, events: Int16(POLLIN), revents: 0)
            let r = poll(&p, 1, Int32(min(left, 3600) * 1000) + 1)
            if r < 0 && Glibc.errno != EINTR { throw SyscallError(call: "poll", path: socket.peer, errno: Glibc.errno) }
            if r <= 0 { continue }
            var b: UInt8 = 0
            let n = recv(socket.fd.raw, &b, 1, Int32(MSG_PEEK | MSG_DONTWAIT))
            if n == 1 { return b }
            if n == 0 { return nil }
            if Glibc.errno == EINTR || Glibc.errno == EAGAIN { continue }
            throw SyscallError(call: "recv", path: socket.peer, errno: Glibc.errno)
        }
    }
}
