import Glibc
import SpoolshipCore
import SpoolshipDaemon
import SpoolshipIO

extension CollectorConnection {
    /// The handshake's I/O, on the reader thread: the preamble, then frames fed to the state
    /// machine (`CollectorHandshake`, in SpoolshipCore) and its answers sent, all within the
    /// handshake deadline. Returns the store of the agent accepted.
    func handshake() throws -> AgentStore {
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
}
