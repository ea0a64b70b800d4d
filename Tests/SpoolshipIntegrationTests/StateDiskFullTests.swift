import Foundation
import Glibc
import Testing

/// The agent's state dir on a file system that fills up: nothing is lost, shipping resumes by
/// itself within a few seconds once space is freed, and an agent started on the full file
/// system starts, says what could not be done, and ships once space returns.
@Suite(.serialized) struct StateDiskFullTests {
    /// Fills the file system of `dir` with one file (written until ENOSPC); returns it.
    static func fill(_ dir: URL) throws -> URL {
        let filler = dir.appendingPathComponent("filler")
        let fd = open(filler.path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw Harness.Failure.errno("open", filler.path) }
        defer { close(fd) }
        let chunk = [UInt8](repeating: 0xAB, count: 64 << 10)
        while true {
            let n = chunk.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == ENOSPC { break }
            if n < 0 && errno != EINTR { throw Harness.Failure.errno("write", filler.path) }
        }
        // The last few bytes too: nothing fits any more.
        while true {
            let n = chunk.withUnsafeBytes { write(fd, $0.baseAddress, 1) }
            if n < 0 { break }
        }
        return filler
    }

    @Test func stateDiskFull_nothingLost_shippingResumesOnceFreed_withoutARestart_andAStartOnItWorks() throws {
        let c = try Cluster("state-full")
        defer { c.remove() }
        try c.startCollector()
        let state = c.root.appendingPathComponent("state")
        try FileManager.default.createDirectory(at: state, withIntermediateDirectories: true)
        #expect(Process.run("mount", ["-t", "tmpfs", "-o", "size=1m", "spoolship-state-full", state.path]) == 0, "the tests run as root and mount a small tmpfs")
        defer { _ = Process.run("umount", ["-l", state.path]) }
        let spool = try c.spool()
        var p = try c.payload()
        var agent = try c.startAgent(c.agentArgs(spools: [("spool", spool)]))
        defer { agent.stop() }
        try p.add("before.bin", size: 1000, seed: 1, into: spool)
        #expect(Harness.waitUntil(timeout: 60) { Harness.files(in: spool).isEmpty }, "\(agent.output)")
        // Full: new files cannot be recorded, and wait.
        var filler = try Self.fill(state)
        // More records than the slack of the journal's last page (tmpfs allocates by pages).
        for i in 0..<100 { try p.add("f-\(i).bin", size: 2000 + i, seed: UInt64(10 + i), into: spool) }
        #expect(Harness.waitUntil(timeout: 30) { agent.output.contains("cannot write the agent state; will seal again later") }, "\(agent.output)")
        #expect(Harness.files(in: spool).count >= 1, "files wait in the spool")
        // Freed: every file ships within a few seconds, no restart.
        try FileManager.default.removeItem(at: filler)
        let freed = Harness.monotonicNow()
        #expect(Harness.waitUntil(timeout: 30) { Harness.files(in: spool).isEmpty }, "spool: \(Harness.files(in: spool))\n\(agent.output.suffix(2000))")
        print("state disk full: the spool emptied \(String(format: "%.1f", Harness.monotonicNow() - freed)) s after space was freed")
        #expect(try p.identical(in: c.committed()).count == 101)

        // A start on the full file system: it starts, says what it could not do, and ships
        // once space returns.
        agent.kill(SIGTERM)
        #expect(agent.wait(timeout: 60) == 0)
        filler = try Self.fill(state)
        try p.add("while-full.bin", size: 3000, seed: 40, into: spool)
        agent = try c.startAgent(c.agentArgs(spools: [("spool", spool)]))
        #expect(Harness.waitUntil(timeout: 30) { agent.output.contains("cannot rewrite the agent state journal at start; going on with it as it is") }, "\(agent.output)")
        #expect(agent.isRunning, "it started")
        try FileManager.default.removeItem(at: filler)
        #expect(Harness.waitUntil(timeout: 30) { Harness.files(in: spool).isEmpty }, "\(agent.output.suffix(2000))")
        #expect(try p.identical(in: c.committed()).count == 102)
    }
}
