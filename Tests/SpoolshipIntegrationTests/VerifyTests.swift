import Foundation
import Glibc
import Testing

/// `spoolship verify DATA_DIR` against a data dir that a real collector filled: clean, it
/// exits 0; with a flipped byte, a truncated file, a missing file and a stray file, it names
/// each under its kind and exits 1. A progress bar appears on a terminal and not otherwise.
@Suite(.serialized) struct VerifyTests {
    /// A collector that committed a few files from one agent, then stopped.
    func shipped(_ name: String) throws -> (Cluster, URL) {
        let c = try Cluster(name)
        try c.startCollector()
        let spool = try c.spool()
        var p = try c.payload()
        for (i, size) in [10_000, 20_000, 30_000, 40_000, 3 << 20].enumerated() {
            try p.add("f\(i).bin", size: size, seed: UInt64(7 + i), into: spool)
        }
        let (status, out) = try c.runOnce(c.agentArgs(spools: [("spool", spool)]))
        try #require(status == 0, "agent output:\n\(out)")
        try #require(Harness.files(in: c.committed()).count == 5)
        return (c, c.committed())
    }

    func verify(_ c: Cluster, _ what: String) throws -> (Int32?, String) {
        let v = try Daemon("spoolship", ["verify", c.dataDir.path], log: c.nextLog(what))
        let status = v.wait(timeout: 60)
        return (status, "\(v.output)")
    }

    @Test func damagedDataDir_eachProblemNamedUnderItsKind_andExitOne() throws {
        let (c, dest) = try shipped("verify-damage")
        defer { c.remove() }
        let (s0, clean) = try verify(c, "verify-clean")
        #expect(s0 == 0, "a clean data dir verifies:\n\(clean)")
        #expect(clean.contains("5 segment(s), \(10_000 + 20_000 + 30_000 + 40_000 + (3 << 20)) bytes verified; 0 corrupt, 0 missing, 0 unknown"), "\(clean)")

        // A flipped byte in the middle of one, another cut short, a third removed, and a
        // file nobody committed.
        let flipped = dest.appendingPathComponent("f4.bin")
        let fd = open(flipped.path, O_RDWR)
        try #require(fd >= 0)
        var b: UInt8 = 0
        #expect(pread(fd, &b, 1, 1 << 20) == 1)
        b ^= 0x01
        #expect(pwrite(fd, &b, 1, 1 << 20) == 1)
        close(fd)
        #expect(truncate(dest.appendingPathComponent("f1.bin").path, 19_999) == 0)
        try FileManager.default.removeItem(at: dest.appendingPathComponent("f2.bin"))
        try Harness.writeRandomFile(dest.appendingPathComponent("stray.bin"), size: 123, seed: 99)

        let (s1, out) = try verify(c, "verify-damaged")
        #expect(s1 == 1, "verify must fail:\n\(out)")
        let lines = out.split(separator: "\n").map(String.init)
        func line(_ prefix: String) -> String? { lines.first { $0.hasPrefix(prefix) } }
        #expect(line("CORRUPT  agent-1/spool/f4.bin: checksum ")?.contains("ledger says") == true, "\(out)")
        #expect(line("CORRUPT  agent-1/spool/f1.bin: truncated: size 19999, ledger says 20000") != nil, "\(out)")
        #expect(line("MISSING  agent-1/spool/f2.bin: in the ledger (30000 bytes), not on disk") != nil, "\(out)")
        #expect(line("UNKNOWN  agent-1/spool/stray.bin: not in the ledger") != nil, "\(out)")
        // The two good files are still counted, and nothing else is reported.
        #expect(line("2 segment(s), 50000 bytes verified; 2 corrupt, 1 missing, 1 unknown, 0 damaged") != nil, "\(out)")
        #expect(lines.filter { $0.hasPrefix("CORRUPT") || $0.hasPrefix("MISSING") || $0.hasPrefix("UNKNOWN") || $0.hasPrefix("DAMAGED") }.count == 4, "\(out)")
    }

    @Test func notADataDir_isAnErrorNamingIt() throws {
        let dir = try Harness.tempDir("verify-empty")
        defer { Harness.remove(dir) }
        let v = try Daemon("spoolship", ["verify", dir.path], log: dir.appendingPathComponent("verify.log"))
        #expect(v.wait(timeout: 30) != 0)
        #expect(v.output.contains("\(dir.path) is not a spoolship data dir"), "\(v.output)")
    }

    @Test func progressBar_onATerminalOnly() throws {
        let (c, _) = try shipped("verify-progress")
        defer { c.remove() }
        // Without a terminal: the report alone.
        let (s0, plain) = try verify(c, "verify-plain")
        #expect(s0 == 0, "\(plain)")
        #expect(!plain.contains("verify ["), "no progress bar without a terminal:\n\(plain)")
        // Under a pseudo-terminal (util-linux script(1)): the bar, ending at every segment.
        let exe = Harness.binDir.appendingPathComponent("spoolship").path
        let log = c.nextLog("verify-pty")
        let s = try Daemon("/usr/bin/script", ["-qec", "\(exe) verify \(c.dataDir.path)", "/dev/null"], log: log)
        #expect(s.wait(timeout: 60) == 0, "\(s.output)")
        #expect(s.output.contains("verify [##############################] 5/5 segments"), "progress bar under a terminal:\n\(s.output)")
        #expect(s.output.contains("5 segment(s)"), "\(s.output)")
    }
}

/// `spoolship-agent --once` shows a progress bar on a terminal, and prints nothing extra
/// without one.
@Suite(.serialized) struct AgentProgressTests {
    @Test func onceProgressBar_underAPseudoTerminal_andNotOtherwise() throws {
        let c = try Cluster("once-progress")
        defer { c.remove() }
        try c.startCollector()
        let spool = try c.spool()
        var p = try c.payload()
        for i in 0..<4 { try p.add("a\(i).bin", size: 1 << 20, seed: UInt64(40 + i), into: spool) }
        // Without a terminal: no bar, and the files arrive.
        let (s0, plain) = try c.runOnce(c.agentArgs(spools: [("spool", spool)]))
        #expect(s0 == 0, "\(plain)")
        #expect(!plain.contains("shipping ["), "no progress bar without a terminal:\n\(plain)")
        #expect(try p.identical(in: c.committed()).count == 4)

        // Under a pseudo-terminal (script(1)): the bar, ending at every segment and byte.
        var q = try c.payload("originals-2")
        for i in 0..<3 { try q.add("b\(i).bin", size: 1 << 20, seed: UInt64(50 + i), into: spool) }
        let args = c.agentArgs(spools: [("spool", spool)]) + ["--once"]
        let cmd = ([Harness.binDir.appendingPathComponent("spoolship-agent").path] + args).joined(separator: " ")
        let s = try Daemon("/usr/bin/script", ["-qec", cmd, "/dev/null"], log: c.nextLog("agent-pty"))
        #expect(s.wait(timeout: 120) == 0, "\(s.output)")
        #expect(s.output.contains("shipping [##############################] 3/3 segments, 3.0/3.0 MiB"), "progress bar under a terminal:\n\(s.output)")
        #expect(try q.identical(in: c.committed()).count == 3)
    }
}
