import Foundation
import Glibc
import Testing

/// A name that a producer chose reaches the log escaped: a newline in it cannot forge a log
/// line, and a terminal escape does not reach the operator's terminal.
@Suite struct LogEscapeTests {
    @Test func aFileNameWithANewlineOrAnEscape_isOneLogLine_escaped() throws {
        let c = try Cluster("log-escape")
        defer { c.remove() }
        try c.startCollector()
        let spool = try c.spool()
        let forged = "x\n2026-01-01T00:00:00+0000 critical spoolship-agent: [SpoolshipDaemon] forged line"
        let colored = "y\u{1b}[31mred\\"
        for n in [forged, colored] {
            #expect(FileManager.default.createFile(atPath: spool.appendingPathComponent(n).path, contents: Data("data".utf8)))
        }
        let agent = try c.startAgent(c.agentArgs(spools: [("spool", spool)]))
        defer { agent.stop() }
        #expect(Harness.waitUntil(timeout: 30) { agent.output.components(separatedBy: "file cannot be shipped").count - 1 >= 2 }, "\(agent.output)")
        let lines = agent.output.split(separator: "\n", omittingEmptySubsequences: false)
        let forgedLines = lines.filter { $0.contains("forged line") }
        #expect(forgedLines.count == 1, "one line, not two: \(forgedLines)")
        #expect(forgedLines.first?.contains("file cannot be shipped") == true)
        #expect(forgedLines.first?.contains("x\\n2026-01-01T00:00:00+0000 critical") == true, "the newline shows as \\n: \(forgedLines)")
        #expect(!agent.output.contains("\u{1b}"), "no escape byte reaches the log")
        #expect(lines.contains { $0.contains("y\\x1B[31mred\\") }, "the escape shows as \\x1B:\n\(agent.output)")
        #expect(Harness.files(in: spool).count == 2, "both stay in the spool")
    }
}
