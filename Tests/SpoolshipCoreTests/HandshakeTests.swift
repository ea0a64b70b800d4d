import SpoolshipCore
import Testing

/// The collector's handshake over TLS: the agent id must be one of the names of the agent's
/// verified certificate, checked at HELLO, before anything else is answered.
@Suite struct HandshakeTests {
    let nonce = [UInt8](repeating: 7, count: Auth.nonceSize)

    @Test func tls_idInTheCertificate_isAccepted_withoutSecrets() throws {
        var m = CollectorHandshake(agents: nil, certificateNames: ["web-1", "spoolship://agent/web-1"])
        #expect(try m.receive(.hello(Hello(agentID: "web-1", auth: []))) == .accepted(agentID: "web-1"))
    }

    @Test func tls_idNotInTheCertificate_isRefused_namingTheNames() throws {
        var m = CollectorHandshake(agents: nil, certificateNames: ["web-1"])
        #expect {
            try m.receive(.hello(Hello(agentID: "web-2", auth: [])))
        } throws: { e in
            guard let r = e as? HandshakeRefusal else { return false }
            return r.code == .authentication && r.message.contains("web-2 is not in the subjectAltName") && r.message.contains("names: web-1")
        }
        // A certificate without DNS or URI names names no agent.
        var empty = CollectorHandshake(agents: nil, certificateNames: [])
        #expect(throws: HandshakeRefusal.self) { try empty.receive(.hello(Hello(agentID: "web-1", auth: []))) }
    }

    @Test func tls_andSecrets_bothMustHold() throws {
        let secret = [UInt8](repeating: 1, count: 32)
        // The certificate's check comes first: no challenge for an id the certificate lacks.
        var wrongCert = CollectorHandshake(agents: ["web-2": secret], certificateNames: ["web-1"], nonce: { nonce })
        #expect(throws: HandshakeRefusal.self) { try wrongCert.receive(.hello(Hello(agentID: "web-2", auth: nonce))) }
        // The id in the certificate still has to prove its secret.
        var m = CollectorHandshake(agents: ["web-1": secret], certificateNames: ["web-1"], nonce: { nonce })
        guard case .send(let frames) = try m.receive(.hello(Hello(agentID: "web-1", auth: nonce))), case .challenge? = frames.first else {
            Issue.record("expected a CHALLENGE")
            return
        }
        #expect(throws: HandshakeRefusal.self) { try m.receive(.auth(proof: [UInt8](repeating: 0, count: 32))) }
    }

    @Test func withoutTLS_noCertificateCheck() throws {
        var m = CollectorHandshake(agents: nil)
        #expect(try m.receive(.hello(Hello(agentID: "anyone", auth: []))) == .accepted(agentID: "anyone"))
    }
}
