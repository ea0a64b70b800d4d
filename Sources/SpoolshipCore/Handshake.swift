/// The collector's side of the handshake as a state machine with no I/O: the connection feeds
/// it each frame it reads (after the preamble) and does what it answers. Being pure, it is
/// what the fuzz target (Fuzz/) drives, together with the frame decoder.
///
/// Over TLS, the agent id in HELLO must first be one of the subjectAltName names of the
/// agent's certificate (which the TLS handshake verified).
///
///   HELLO ──(no --agents)──────────────────────────────► accepted
///   HELLO ──(--agents)──► send CHALLENGE ──► AUTH ─────► accepted
///   anything else, or a check failing ─────────────────► HandshakeRefusal (thrown)
public struct CollectorHandshake {
    public enum Step: Equatable {
        /// Send these frames, then read the next one.
        case send([Frame])
        /// The agent is who it says it is (or no credentials are required): go on.
        case accepted(agentID: String)
    }

    private enum State {
        case awaitingHello
        case awaitingAuth(hello: Hello, secret: [UInt8], nonce: [UInt8])
        case finished
    }

    private let agents: [String: [UInt8]]?
    private let certificateNames: [String]?
    private let makeNonce: () -> [UInt8]
    private var state = State.awaitingHello
    /// The agent id from a well-formed HELLO, once one has arrived (for the log).
    public private(set) var agentID: String?

    /// `agents` are the known agents and their secrets; nil accepts any well-formed id.
    /// `certificateNames`: over TLS, the subjectAltName entries (DNS and URI) of the agent's
    /// verified certificate; the agent id must be one of them. nil without TLS.
    public init(agents: [String: [UInt8]]?, certificateNames: [String]? = nil, nonce: @escaping () -> [UInt8] = Auth.nonce) {
        self.agents = agents
        self.certificateNames = certificateNames
        makeNonce = nonce
    }

    public mutating func receive(_ frame: Frame) throws -> Step {
        switch state {
        case .finished:
            throw HandshakeRefusal(.protocolViolation, "the handshake is already over")
        case .awaitingHello:
            state = .finished  // whatever happens next, a second HELLO is never taken
            guard case .hello(let hello) = frame else {
                throw HandshakeRefusal(.protocolViolation, "expected HELLO, got \(frame.type)")
            }
            guard hello.version == Wire.version else {
                throw HandshakeRefusal(.unsupportedVersion, "protocol version \(hello.version) is not supported; this collector speaks version \(Wire.version)")
            }
            do {
                try Names.validateIdentifier(hello.agentID, what: "agent id")
            } catch {
                throw HandshakeRefusal(.badName, "\(error)")
            }
            agentID = hello.agentID
            if let names = certificateNames, !names.contains(hello.agentID) {
                let shown = names.isEmpty ? "none" : names.joined(separator: ", ")
                throw HandshakeRefusal(.authentication, "agent id \(hello.agentID) is not in the subjectAltName of the agent's TLS certificate (its DNS and URI names: \(shown)); the certificate must name the agent",
                                       logReason: "the TLS certificate does not name this agent id in its subjectAltName")
            }
            guard let agents = agents else { return .accepted(agentID: hello.agentID) }
            guard let secret = agents[hello.agentID] else {
                throw HandshakeRefusal(.authentication, "agent \(hello.agentID) is not known to this collector", logReason: "unknown agent id")
            }
            guard hello.auth.count == Auth.nonceSize else {
                throw HandshakeRefusal(.authentication, "agent \(hello.agentID) sent no credentials; this collector requires them (give the agent --secret-file)",
                                       logReason: "no credentials in HELLO (or a nonce of the wrong size)")
            }
            let nonce = makeNonce()
            state = .awaitingAuth(hello: hello, secret: secret, nonce: nonce)
            return .send([.challenge(nonce: nonce, proof: Auth.collectorProof(secret: secret, agentID: hello.agentID, agentNonce: hello.auth, collectorNonce: nonce))])
        case .awaitingAuth(let hello, let secret, let nonce):
            state = .finished
            if case .error(_, _, let message) = frame {
                throw HandshakeRefusal(.authentication, "authentication failed for agent \(hello.agentID): \(message)",
                                       logReason: "the agent could not verify this collector: \(message)")
            }
            guard case .auth(let proof) = frame else {
                throw HandshakeRefusal(.protocolViolation, "expected AUTH, got \(frame.type)")
            }
            let expected = Auth.agentProof(secret: secret, agentID: hello.agentID, agentNonce: hello.auth, collectorNonce: nonce)
            guard Auth.same(proof, expected) else {
                throw HandshakeRefusal(.authentication, "authentication failed for agent \(hello.agentID)",
                                       logReason: "wrong proof (wrong secret, or a replayed handshake)")
            }
            return .accepted(agentID: hello.agentID)
        }
    }
}

/// A handshake turned down: `code` and `message` go to the peer in an ERROR frame. A failed
/// authentication also has `logReason`, for the collector's `authentication failed` line.
public struct HandshakeRefusal: Error, Equatable, CustomStringConvertible {
    public var code: ErrorCode
    public var message: String
    public var logReason: String?
    public init(_ code: ErrorCode, _ message: String, logReason: String? = nil) {
        self.code = code
        self.message = message
        self.logReason = logReason
    }
    public var description: String { "\(code): \(message)" }
}
