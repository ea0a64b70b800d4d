import SpoolshipCore
import Testing

@Suite struct AuthUnitTests {
    let secret = Array("web-1-secret-0123456789".utf8)

    @Test func proofs_dependOnEverything_andTheSidesDiffer() {
        let a = Auth.nonce(), c = Auth.nonce()
        #expect(a.count == 32 && a != c, "fresh random nonces")
        let agent = Auth.agentProof(secret: secret, agentID: "web-1", agentNonce: a, collectorNonce: c)
        let coll = Auth.collectorProof(secret: secret, agentID: "web-1", agentNonce: a, collectorNonce: c)
        #expect(agent.count == 32 && !Auth.same(agent, coll), "one side's proof never passes for the other's")
        #expect(Auth.same(agent, Auth.agentProof(secret: secret, agentID: "web-1", agentNonce: a, collectorNonce: c)))
        #expect(!Auth.same(agent, Auth.agentProof(secret: Array("other-secret-0123456789".utf8), agentID: "web-1", agentNonce: a, collectorNonce: c)))
        #expect(!Auth.same(agent, Auth.agentProof(secret: secret, agentID: "web-2", agentNonce: a, collectorNonce: c)))
        #expect(!Auth.same(agent, Auth.agentProof(secret: secret, agentID: "web-1", agentNonce: a, collectorNonce: Auth.nonce())))
        #expect(!Auth.same(agent, Array(agent.dropLast())))
    }

    @Test func agentsFile_parses_andNamesTheLineOfAnError() throws {
        let ok = try AgentSecrets.parse("# agents\n\nweb-1   secret-of-web-1-xx  # comment\n\tweb-2 another one with spaces\n")
        #expect(ok["web-1"] == Array("secret-of-web-1-xx".utf8))
        #expect(ok["web-2"] == Array("another one with spaces".utf8))
        let bad: [(String, String)] = [
            ("web-1\n", "line 1: expected AGENT-ID SECRET"),
            ("\nweb/1 secret-of-web-1-xx\n", "line 2:"),
            ("web-1 short\n", "line 1: the secret of web-1 is shorter than 16 characters"),
            ("web-1 secret-of-web-1-xx\nweb-1 secret-of-web-1-yy\n", "line 2: agent id web-1 is listed twice"),
        ]
        for (text, message) in bad {
            do {
                _ = try AgentSecrets.parse(text)
                Issue.record("accepted \(text)")
            } catch {
                #expect("\(error)".hasPrefix(message), "\(error)")
            }
        }
        #expect(try AgentSecrets.parseSecret("  secret-of-web-1-xx \n") == Array("secret-of-web-1-xx".utf8))
        #expect(throws: (any Error).self) { try AgentSecrets.parseSecret("short\n") }
    }
}
