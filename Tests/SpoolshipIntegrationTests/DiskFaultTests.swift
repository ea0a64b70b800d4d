import Foundation
import Glibc
import Testing

/// Rows 8 to 11 of RELIABILITY.md, with faults injected in the real daemons: an fdatasync
/// that fails on the collector (an LD_PRELOAD shim), a disk that fills in the middle of a segment (a small
/// tmpfs), the agent killed in the middle of removing an acknowledged file (strace), and
/// sendfile and splice interrupted, cut short or timing out (another shim).
@Suite(.serialized) struct DiskFaultTests {
    /// Row 11: on both sides, sendfile and splice fail with EINTR before moving anything, move
    /// a random part of what was asked, or (on the socket) fail with EAGAIN as a socket
    /// deadline does. The first two are retried in place; EAGAIN ends the connection, and the
    /// agent reconnects and resumes. Every file arrives identical.
    @Test func sendfileAndSplice_interruptedShortOrTimedOut_areRetried_andEveryFileArrives() throws {
        let c = try Cluster("short-io")
        defer { c.remove() }
        let shim = try c.buildShim("short_io")
        let seed = UInt64(Date().timeIntervalSince1970)
        print("short io: seed \(seed)")
        func env(_ seed: UInt64) -> [String: String] {
            ["LD_PRELOAD": shim, "SPSH_IO_SEED": "\(seed)", "SPSH_IO_EINTR": "5", "SPSH_IO_SHORT": "3", "SPSH_IO_EAGAIN": "60"]
        }
        try c.startCollector(extra: ["--checkpoint-bytes", "4194304"], env: env(seed))
        let spool = try c.spool()
        var p = try c.payload()
        var rng = Harness.SplitMix64(seed: seed)
        for i in 0..<30 { try p.add(String(format: "f%02d", i), size: Int(rng.next() % 3_000_000), seed: seed &+ UInt64(i), into: spool) }
        try p.add("big.bin", size: 48 << 20, seed: seed &+ 100, into: spool)
        let (status, out) = try c.runOnce(c.agentArgs(spools: [("spool", spool)], extra: ["--timeout", "60"]), timeout: 240, env: env(seed &+ 1))
        // A graceful stop, so that the shim reports its counts at exit.
        c.collector?.kill(SIGTERM)
        #expect(c.collector?.wait(timeout: 30) == 0, "the collector stops cleanly")
        let log = c.collector?.output ?? ""
        #expect(status == 0, "\(out.suffix(3000))\n\(log.suffix(3000))")
        #expect(try p.identical(in: c.committed()).count == 31)
        #expect(Harness.files(in: c.committed()).count == 31, "no duplicate")
        #expect(c.partials().isEmpty)
        // The faults happened, on both sides: each count line is there with non-zero figures.
        func counts(_ text: String, _ call: String) -> [String: Int] {
            guard let line = text.split(separator: "\n").last(where: { $0.hasPrefix("short_io: \(call) ") }) else { return [:] }
            var d: [String: Int] = [:]
            for kv in line.split(separator: " ").dropFirst(2) {
                let parts = kv.split(separator: "=")
                if parts.count == 2 { d[String(parts[0])] = Int(parts[1]) }
            }
            return d
        }
        let sent = counts(out, "sendfile"), spliced = counts(log, "splice")
        print("short io: agent sendfile \(sent); collector splice \(spliced)")
        #expect((sent["eintr"] ?? 0) > 0 && (sent["short"] ?? 0) > 0, "agent side: \(sent)\n\(out.suffix(2000))")
        #expect((spliced["eintr"] ?? 0) > 0 && (spliced["short"] ?? 0) > 0, "collector side: \(spliced)\n\(log.suffix(2000))")
        let timeouts = (sent["eagain"] ?? 0) + (spliced["eagain"] ?? 0)
        #expect(timeouts > 0, "at least one timeout was injected")
        // EINTR and short calls are retried in place: only a timeout costs a connection.
        let connections = out.components(separatedBy: "connected to collector").count - 1
        #expect(connections >= 1 && connections <= 1 + timeouts, "\(connections) connections for \(timeouts) injected timeouts:\n\(out.suffix(3000))")
    }

    /// Row 9: the collector's first fdatasync of a partial fails with EIO (an LD_PRELOAD
    /// shim, Tests/FaultShim, built here with cc). That partial is poisoned: no
    /// acknowledgement for it, it is discarded, and the agent sends the segment again into a
    /// new file. Everything arrives intact, once, and other segments are not held up.
    @Test(arguments: [1, 2])
    func fdatasyncFailsOnTheCollector_thePartialIsPoisoned_andTheSegmentRefetched(nth: Int) throws {
        let c = try Cluster("disk-eio-\(nth)")
        defer { c.remove() }
        let shim = try c.buildShim("fail_fdatasync")
        // Each file its own fdatasync (the file system sync of batches has CommitSyncTests).
        let port = try c.startCollector(extra: ["--checkpoint-bytes", "1048576", "--commit-sync", "file"],
                                        env: ["LD_PRELOAD": shim, "SPSH_FAIL_MATCH": "/.spoolship/partial/", "SPSH_FAIL_NTH": "\(nth)"])
        let d = c.collector!
        let spool = try c.spool()
        var p = try c.payload()
        try p.add("big.bin", size: 8 << 20, seed: 11, into: spool)
        for i in 0..<5 { try p.add("small-\(i)", size: 10_000, seed: UInt64(i), into: spool) }
        let (status, out) = try c.runOnce(c.agentArgs(spools: [("spool", spool)], target: port, extra: ["--timeout", "60"]), timeout: 120)
        #expect(status == 0, "\(out)\n\(d.output.suffix(3000))")
        #expect(try p.identical(in: c.committed()).count == 6)
        #expect(Harness.files(in: c.committed()).count == 6, "no duplicate")
        let log = d.output
        #expect(log.components(separatedBy: "fail_fdatasync: injected EIO").count == 2, "one failure injected:\n\(log.suffix(3000))")
        #expect(log.contains("the partial is poisoned") || log.contains("commit failed; discarding the partial") || log.contains("partial could not be made durable"), "\(log.suffix(3000))")
        #expect(out.contains("collector could not commit a segment; offering it again"), "the agent was told:\n\(out)")
        #expect(c.partials().isEmpty)
    }

    /// Row 10, the disk filling in the middle of a segment (no reserve): the collector keeps
    /// what was durable and says "no space"; the agent backs off; once space is freed the
    /// transfer resumes from what the collector holds, and everything arrives once.
    @Test func dataDirFullMidSegment_noSpace_thenResumesWhenFreed() throws {
        let c = try Cluster("disk-enospc")
        defer { c.remove() }
        try FileManager.default.createDirectory(at: c.dataDir, withIntermediateDirectories: true)
        #expect(Process.run("mount", ["-t", "tmpfs", "-o", "size=48m", "spoolship-enospc", c.dataDir.path]) == 0, "the tests run as root and mount a small tmpfs")
        defer { _ = Process.run("umount", ["-l", c.dataDir.path]) }
        // 24 MiB of the 48 taken by something else: the 32 MiB segment cannot fit.
        let filler = c.dataDir.appendingPathComponent("filler")
        try Harness.writeRandomFile(filler, size: 24 << 20, seed: 1)
        try c.startCollector(extra: ["--free-space-reserve", "0", "--checkpoint-bytes", "4194304"])
        let proxy = try c.startProxy()
        let spool = try c.spool()
        var p = try c.payload()
        try p.add("big.bin", size: 32 << 20, seed: 12, into: spool)
        let agent = try c.startAgent(c.agentArgs(spools: [("spool", spool)], target: proxy.port))
        defer { agent.stop() }
        #expect(Harness.waitUntil(timeout: 60) { (c.collector?.output ?? "").contains("no space left on the collector's disk") }, "\(c.collector?.output ?? "")")
        // The agent sees the ERROR 7, or (when it is still sending) the connection closing.
        #expect(Harness.waitUntil(timeout: 30) { agent.output.contains("connection to collector failed") }, "\(agent.output)")
        let held = c.partials().count
        #expect(held == 1, "the partial stays: what was durable is kept")
        #expect(Harness.files(in: spool) == ["big.bin"], "the agent keeps its file")
        // Space comes back.
        try FileManager.default.removeItem(at: filler)
        #expect(Harness.waitUntil(timeout: 90) { (try? p.identical(in: c.committed()).count) == 1 && Harness.files(in: spool).isEmpty }, "\(agent.output.suffix(2000))")
        #expect(agent.output.contains("resuming segment"), "resumed from what the collector held:\n\(agent.output.suffix(2000))")
        let ratio = Double(proxy.bytesFromClient) / Double(32 << 20)
        print("ENOSPC mid-segment: bytes on the wire / payload = \(String(format: "%.3f", ratio))")
        // What each retry against the full disk pushed into the socket before the refusal
        // counts too, so the ratio depends on how many retries met the full disk: printed,
        // not asserted. The resume itself is asserted above.
        #expect(c.partials().isEmpty)
    }

    /// Row 8: the agent is killed (strace, SIGKILL on entering the call) as it puts an
    /// acknowledged file aside, or as it unlinks it; with `--archive-dir`, as it renames the
    /// second file into the archive, the first one archived and not yet checked. Each restart
    /// finishes the removal (deletion is idempotent), nothing is shipped twice, and no restart
    /// fails. The first renameat2 of the agent is the reaper moving an acknowledged file (aside,
    /// or into the archive), the first unlinkat its removal.
    @Test(arguments: [("renameat2", 1, false), ("unlinkat", 1, false), ("renameat2", 2, true)])
    func agentKilledWhileRemovingAnAcknowledgedFile_theRestartFinishesIt(call: String, when: Int, archiving: Bool) throws {
        let c = try Cluster("disk-reap-\(call)-\(when)\(archiving ? "-archive" : "")")
        defer { c.remove() }
        try c.startCollector()
        let spool = try c.spool()
        var p = try c.payload()
        for i in 0..<5 { try p.add("f\(i)", size: 20_000, seed: UInt64(i), into: spool) }
        let archive = c.root.appendingPathComponent("archive")
        let args = c.agentArgs(spools: [("spool", spool)]) + ["--once", "--timeout", "60"] + (archiving ? ["--archive-dir", archive.path] : [])
        let exe = Harness.binDir.appendingPathComponent("spoolship-agent").path
        let traced = try Daemon("/usr/bin/strace", ["-f", "-o", "/dev/null", "-e", "trace=\(call)", "-e", "inject=\(call):signal=KILL:when=\(when)", exe] + args,
                                log: c.nextLog("agent-traced"))
        #expect(traced.wait(timeout: 60) != nil)
        #expect(!traced.output.contains("all segments shipped"), "killed before the end:\n\(traced.output)")
        #expect(!Harness.files(in: c.committed()).isEmpty, "killed after an acknowledgement, while removing its file")
        #expect(!Harness.files(in: spool).isEmpty, "the killed run left files to remove")
        // Restart until done: at most a few runs, each of them must start.
        var runs = 0
        var finished = false
        while runs < 3 && !finished {
            runs += 1
            let (status, out) = try c.runOnce(args, timeout: 60)
            #expect(out.contains("agent stopped") == false || status == 0, "restart \(runs) failed:\n\(out)")
            finished = status == 0
        }
        #expect(finished)
        #expect(try p.identical(in: c.committed()).count == 5)
        #expect(Harness.files(in: c.committed()).count == 5, "nothing twice")
        #expect(Harness.files(in: spool).isEmpty, "every acknowledged file removed, the aside names included")
        if archiving {
            let archived = archive.appendingPathComponent("spool")
            #expect(Harness.files(in: archived).count == 5, "each file archived once: \(Harness.files(in: archived))")
            #expect(try p.identical(in: archived).count == 5)
        }
    }
}
