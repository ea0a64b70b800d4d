import Foundation
import Glibc
import Testing

/// Two agents configured with one agent id: after they took the connection from each other
/// twice, the collector keeps the one it has and refuses the other with ERROR 10, naming the
/// other connection; each agent says what is wrong, the refused one tries again seldom, and
/// ships once the first is gone. Nothing is lost.
@Suite(.serialized) struct TwinAgentTests {
    @Test func twoDaemonsOnOneID_theSecondIsRefusedClearly_seldom_andShipsOnceTheFirstIsGone() throws {
        let c = try Cluster("twin-ids")
        defer { c.remove() }
        try c.startCollector()
        let spoolA = try c.spool("a")
        let spoolB = try c.spool("b")
        var p = try c.payload()
        let first = try c.startAgent(c.agentArgs(id: "twin", state: "state-a", spools: [("a", spoolA)]))
        defer { first.stop() }
        for i in 0..<5 { try p.add("a-\(i).bin", size: 1000 * (i + 1), seed: UInt64(i + 1), into: spoolA) }
        #expect(Harness.waitUntil(timeout: 60) { Harness.files(in: spoolA).isEmpty }, "the first agent ships: \(first.output)")
        let second = try c.startAgent(c.agentArgs(id: "twin", state: "state-b", spools: [("b", spoolB)]))
        defer { second.stop() }
        for i in 0..<5 { try p.add("b-\(i).bin", size: 2000 * (i + 1), seed: UInt64(i + 10), into: spoolB) }
        // They may take the connection from each other twice; then a newcomer is refused
        // while the owner lives, and tries again seldom.
        let start = Harness.monotonicNow()
        var doc: [String: Any] = [:]
        #expect(try Harness.waitUntil(timeout: 90) {
            doc = try StatusTests.json(c.collectorSocket)
            return (StatusTests.int(doc, "errors.agent_id_in_use") ?? 0) >= 2
        }, "\(doc)\n\(c.collector!.output)")
        let elapsed = Harness.monotonicNow() - start
        let docA = try StatusTests.json(c.agentSocket(state: "state-a"))
        let docB = try StatusTests.json(c.agentSocket(state: "state-b"))
        let refusals = (StatusTests.int(docA, "errors.refused") ?? 0) + (StatusTests.int(docB, "errors.refused") ?? 0)
        print("twin agent ids: \(refusals) refused or superseded connections of the two agents in \(String(format: "%.1f", elapsed)) s")
        #expect(Double(refusals) <= 4 + elapsed / 4, "seldom: \(refusals) in \(elapsed) s")
        for (agent, d) in [(first, docA), (second, docB)] {
            #expect(agent.output.contains("another connection holds this agent id at the collector; two agents with one id?"), "each agent says what is wrong:\n\(agent.output)")
            _ = d
        }
        let lastErrors = [docA, docB].compactMap { StatusTests.string($0, "connection.last_error") }
        #expect(lastErrors.contains { $0.contains("agent id twin is in use by a live connection from 127.0.0.1:") }, "the refused one's status names the other connection: \(lastErrors)")
        #expect(c.collector!.output.contains("agent id in use by another live connection; refusing this one (two agents with one id?)"))
        #expect(c.collector!.output.contains("other.peer=127.0.0.1:"), "the collector names the other connection")
        // The first goes: the second ships everything.
        first.kill(SIGTERM)
        #expect(first.wait(timeout: 60) == 0)
        #expect(Harness.waitUntil(timeout: 120) { Harness.files(in: spoolB).isEmpty }, "nothing lost:\n\(second.output)")
        #expect(try p.identical(in: c.committed(agent: "twin", spool: "a")).count == 5)
        #expect(try p.identical(in: c.committed(agent: "twin", spool: "b")).count == 5)
    }
}
