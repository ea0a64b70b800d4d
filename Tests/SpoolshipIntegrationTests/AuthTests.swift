import Foundation
import Glibc
import SpoolshipCore
import SpoolshipIO
import Testing

/// Credentials (row 14 of RELIABILITY.md): the collector's --agents file, the agent's
/// --secret-file, and a mutual challenge-response. Every hostile case is refused with a named
/// error and a log line naming the peer and the agent id, nothing is written for it, and a
/// real agent still ships afterwards.
@Suite(.serialized) struct AuthTests {
    static let secret = "web-1-secret-0123456789"

    func privateFile(_ c: Cluster, _ name: String, _ text: String, mode: mode_t = 0o600) throws -> URL {
        let u = c.root.appendingPathComponent(name)
        try text.write(to: u, atomically: true, encoding: .utf8)
        #expect(chmod(u.path, mode) == 0)
        return u
    }

    /// Every file under the data dir, relative, recursively (the private area included).
    func allFiles(_ dir: URL) -> Set<String> {
        var out: Set<String> = []
        if let e = FileManager.default.enumerator(atPath: dir.path) {
            while let f = e.nextObject() as? String { out.insert(f) }
        }
        return out
    }

    func startAuthenticatingCollector(_ c: Cluster) throws -> URL {
        let agents = try privateFile(c, "agents", "# id secret\nweb-1 \(Self.secret)\nweb-2 another-secret-0123456789\n")
        try c.startCollector(extra: ["--agents", agents.path])
        return agents
    }

    func realAgentShips(_ c: Cluster, tag: String) throws {
        let spool = try c.spool("real-\(tag)")
        var p = try c.payload("orig-\(tag)")
        try p.add("good-\(tag)", size: 50_000, seed: 3, into: spool)
        let secret = try privateFile(c, "secret-\(tag)", Self.secret + "\n")
        let (status, out) = try c.runOnce(c.agentArgs(id: "web-1", state: "state-\(tag)", spools: [("spool", spool)], extra: ["--secret-file", secret.path]), timeout: 60)
        #expect(status == 0, "real agent after \(tag): \(out)")
        #expect(try p.identical(in: c.committed(agent: "web-1")).count == 1)
    }

    @Test func wrongSecret_unknownAgent_noCredentials_otherAgentsId_eachRefused_nothingWritten() throws {
        let c = try Cluster("auth-refused")
        defer { c.remove() }
        _ = try startAuthenticatingCollector(c)
        let spool = try c.spool()
        var p = try c.payload()
        try p.add("x.bin", size: 1000, seed: 1, into: spool)
        let wrong = try privateFile(c, "wrong", "not-the-secret-0123456789\n")
        let good = try privateFile(c, "good", Self.secret + "\n")
        let cases: [(what: String, id: String, extra: [String], agentSays: String, collectorSays: String)] = [
            ("wrong secret", "web-1", ["--secret-file", wrong.path], "could not prove that it holds this agent's secret", "the agent could not verify this collector"),
            ("unknown agent", "web-9", ["--secret-file", good.path], "is not known to this collector", "unknown agent id"),
            ("no credentials", "web-1", [], "sent no credentials", "no credentials in HELLO"),
            ("another agent's id with web-1's secret", "web-2", ["--secret-file", good.path], "could not prove that it holds this agent's secret", "the agent could not verify this collector"),
        ]
        for (i, k) in cases.enumerated() {
            let before = allFiles(c.dataDir)
            let (status, out) = try c.runOnce(c.agentArgs(id: k.id, state: "state-\(i)", spools: [("spool", spool)], extra: k.extra + ["--timeout", "30"]), timeout: 60)
            #expect(status == 1, "\(k.what): the agent stops for good:\n\(out)")
            #expect(out.contains(k.agentSays), "\(k.what):\n\(out)")
            let log = c.collector?.output ?? ""
            #expect(log.split(separator: "\n").contains { $0.contains("authentication failed") && $0.contains("agent.id=\(k.id)") && $0.contains("peer=127.0.0.1:") && $0.contains(k.collectorSays) },
                    "\(k.what): the collector's log names the peer and the agent id:\n\(log)")
            #expect(allFiles(c.dataDir) == before, "\(k.what): nothing written")
            #expect(Harness.files(in: spool) == ["x.bin"], "\(k.what): the agent keeps its file")
        }
        try realAgentShips(c, tag: "after")
    }

    /// A recorded handshake replayed: HELLO and AUTH of a session that succeeded, sent again by
    /// a client that does not know the secret. The collector's fresh nonce makes the old proof
    /// worthless.
    @Test func replayedHandshake_isRefused() throws {
        let c = try Cluster("auth-replay")
        defer { c.remove() }
        _ = try startAuthenticatingCollector(c)
        let secret = Array(Self.secret.utf8)
        let nonce = Auth.nonce()
        // Session 1, with the secret: recorded.
        let first = try RawClient(port: c.port)
        try first.send([.hello(Hello(agentID: "web-1", auth: nonce))], preamble: true)
        let frames = try first.readUntilClosed(stopAfter: 1)
        guard case .challenge(let collectorNonce, let proof)? = frames.first else { throw TestFailure("no challenge: \(frames)") }
        #expect(Auth.same(proof, Auth.collectorProof(secret: secret, agentID: "web-1", agentNonce: nonce, collectorNonce: collectorNonce)))
        let recordedAuth = Frame.auth(proof: Auth.agentProof(secret: secret, agentID: "web-1", agentNonce: nonce, collectorNonce: collectorNonce))
        try first.send([recordedAuth])
        guard case .welcome? = try first.readUntilClosed(stopAfter: 1).first else { throw TestFailure("the recorded session did not succeed") }
        first.socket.shutdown()
        // Session 2: the same bytes again.
        let before = allFiles(c.dataDir)
        let replay = try RawClient(port: c.port)
        try replay.send([.hello(Hello(agentID: "web-1", auth: nonce))], preamble: true)
        guard case .challenge(let fresh, _)? = try replay.readUntilClosed(stopAfter: 1).first else { throw TestFailure("no challenge") }
        #expect(fresh != collectorNonce, "a fresh nonce each time")
        let (code, message) = try replay.expectRefusal { try replay.send([recordedAuth]) }
        #expect(code == .authentication, "\(message)")
        #expect(Harness.waitUntil(timeout: 10) { (c.collector?.output ?? "").contains("wrong proof (wrong secret, or a replayed handshake)") })
        #expect(allFiles(c.dataDir) == before)
        try realAgentShips(c, tag: "after-replay")
    }

    @Test func secretFilesReadableByOthers_areRefusedAtStart_namingTheFileAndTheFix() throws {
        let c = try Cluster("auth-modes")
        defer { c.remove() }
        let agents = try privateFile(c, "agents", "web-1 \(Self.secret)\n", mode: 0o640)
        let d = try Daemon("spoolship-collector", ["--config", c.emptyConfig.path, "--control-socket", "none", "--listen", "127.0.0.1:0", "--data-dir", c.dataDir.path, "--agents", agents.path],
                           log: c.nextLog("collector"))
        #expect(d.wait(timeout: 30).map { $0 != 0 } == true)
        #expect(d.output.contains("agents file \(agents.path) is open to group or others (mode 640)") && d.output.contains("chmod 600 \(agents.path)"), "\(d.output)")
        let secret = try privateFile(c, "secret", Self.secret + "\n", mode: 0o644)
        let spool = try c.spool()
        let (status, out) = try c.runOnce(c.agentArgs(spools: [("spool", spool)], target: 1, extra: ["--secret-file", secret.path]), timeout: 30)
        #expect(status != 0)
        #expect(out.contains("secret file \(secret.path) is open to group or others (mode 644)") && out.contains("chmod 600"), "\(out)")
        let bad = try privateFile(c, "agents-bad", "web-1 short\n")
        let d2 = try Daemon("spoolship-collector", ["--config", c.emptyConfig.path, "--control-socket", "none", "--listen", "127.0.0.1:0", "--data-dir", c.dataDir.path, "--agents", bad.path],
                            log: c.nextLog("collector"))
        #expect(d2.wait(timeout: 30).map { $0 != 0 } == true)
        #expect(d2.output.contains("agents file \(bad.path): line 1: the secret of web-1 is shorter than 16 characters"), "\(d2.output)")
    }

    @Test func reload_picksUpAChangedAgentsFile() throws {
        let c = try Cluster("auth-reload")
        defer { c.remove() }
        let agents = try startAuthenticatingCollector(c)
        let spool = try c.spool()
        var p = try c.payload()
        try p.add("n.bin", size: 1000, seed: 5, into: spool)
        let newSecret = try privateFile(c, "secret-new", "newcomer-secret-0123456789\n")
        let args = c.agentArgs(id: "newcomer", spools: [("spool", spool)], extra: ["--secret-file", newSecret.path, "--timeout", "30"])
        let (s1, o1) = try c.runOnce(args, timeout: 60)
        #expect(s1 == 1 && o1.contains("is not known to this collector"), "\(o1)")
        try ("web-1 \(Self.secret)\nnewcomer newcomer-secret-0123456789\n").write(to: agents, atomically: true, encoding: .utf8)
        #expect(chmod(agents.path, 0o600) == 0)
        c.collector?.kill(SIGHUP)
        #expect(Harness.waitUntil(timeout: 30) { (c.collector?.output ?? "").contains("configuration reloaded") })
        let (s2, o2) = try c.runOnce(args, timeout: 60)
        #expect(s2 == 0, "\(o2)")
        #expect(try p.identical(in: c.committed(agent: "newcomer")).count == 1)

        // Revoked: web-1 is connected when it leaves the file; its connection is closed at
        // the reload, and its reconnection refused.
        let webSpool = try c.spool("web")
        let webSecret = try privateFile(c, "secret-web", Self.secret + "\n")
        let web = try c.startAgent(c.agentArgs(id: "web-1", state: "state-web", spools: [("spool", webSpool)], extra: ["--secret-file", webSecret.path]))
        defer { web.stop() }
        #expect(Harness.waitUntil(timeout: 30) { web.output.contains("connected to collector") }, "\(web.output)")
        try "newcomer newcomer-secret-0123456789\n".write(to: agents, atomically: true, encoding: .utf8)
        #expect(chmod(agents.path, 0o600) == 0)
        c.collector?.kill(SIGHUP)
        #expect(Harness.waitUntil(timeout: 30) { (c.collector?.output ?? "").contains("closing the connection of an agent removed from the agents file") },
                "\(c.collector?.output.suffix(2000) ?? "")")
        #expect(web.wait(timeout: 60) == 1, "the revoked agent is refused at its next handshake and stops:\n\(web.output.suffix(2000))")
        #expect(web.output.contains("is not known to this collector"), "\(web.output.suffix(2000))")
    }
}
