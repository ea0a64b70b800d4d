import Foundation
import Glibc
import Testing

/// The collector's commit batches made durable by one sync of the file system
/// (`commit-sync = filesystem`, the default) or by each file's own fdatasync (`file`): the
/// mode is the one asked for, a failed file system sync poisons only the files whose own sync
/// then fails, and a collector killed inside the batch's sync loses and duplicates nothing.
@Suite struct CommitSyncTests {
    /// Each mode ships 300 small files whole and once; strace counts the collector's syncfs
    /// calls: several files a call with `filesystem`, none with `file`.
    @Test(arguments: ["filesystem", "file"])
    func eachMode_shipsEveryFileOnce_andSyncsAsItSays(mode: String) throws {
        let c = try Cluster("commit-sync-\(mode)")
        defer { c.remove() }
        let trace = c.root.appendingPathComponent("syncfs.trace")
        try c.startCollector(extra: ["--commit-sync", mode], under: ["/usr/bin/strace", "-f", "-qq", "-o", trace.path, "-e", "trace=syncfs"])
        let spool = try c.spool()
        var p = try c.payload()
        for i in 0..<300 { try p.add(String(format: "f%03d", i), size: 4096, seed: UInt64(i), into: spool) }
        let (status, out) = try c.runOnce(c.agentArgs(spools: [("spool", spool)], extra: ["--timeout", "120"]), timeout: 180)
        #expect(status == 0, "\(out)\n\(c.collector!.output.suffix(3000))")
        #expect(try p.identical(in: c.committed()).count == 300)
        #expect(Harness.files(in: c.committed()).count == 300, "each file once")
        // The collector itself (strace's child) stops; strace then writes out and exits.
        for child in Daemon.children(of: c.collector!.pid) { kill(child, SIGTERM) }
        #expect(c.collector!.wait(timeout: 30) != nil)
        let calls = ((try? String(contentsOf: trace, encoding: .utf8)) ?? "").split(separator: "\n").filter { $0.contains("syncfs(") && $0.contains("= 0") }.count
        if mode == "filesystem" {
            // Batches of one file take their own fdatasync; the rest share a syncfs each.
            #expect(calls >= 1 && calls < 300, "\(calls) syncfs calls for 300 files")
        } else {
            #expect(calls == 0, "commit-sync = file never syncs the whole file system")
        }
        print("commit-sync = \(mode): \(calls) syncfs calls for 300 files")
    }

    /// Every syncfs of the collector fails (an LD_PRELOAD shim, Tests/FaultShim), and the one
    /// file of 7,777 bytes fails its own fdatasync once. Each batch falls back to a sync of each
    /// file: only that file is poisoned and sent again; every file arrives, once.
    @Test func fileSystemSyncFails_onlyTheFileWhoseOwnSyncFailsIsSentAgain() throws {
        let c = try Cluster("commit-syncfs-eio")
        defer { c.remove() }
        let shim = try c.buildShim("fail_fdatasync")
        try c.startCollector(env: ["LD_PRELOAD": shim, "SPSH_FAIL_SYNCFS_COUNT": "1000000",
                                   "SPSH_FAIL_MATCH": "/.spoolship/partial/", "SPSH_FAIL_SIZE": "7777"])
        let d = c.collector!
        let spool = try c.spool()
        var p = try c.payload()
        for i in 0..<20 { try p.add(String(format: "f%02d", i), size: 4096, seed: UInt64(i), into: spool) }
        try p.add("f20-odd", size: 7777, seed: 99, into: spool)
        for i in 21..<40 { try p.add(String(format: "f%02d", i), size: 4096, seed: UInt64(i), into: spool) }
        let (status, out) = try c.runOnce(c.agentArgs(spools: [("spool", spool)], extra: ["--timeout", "60"]), timeout: 120)
        #expect(status == 0, "\(out)\n\(d.output.suffix(3000))")
        #expect(try p.identical(in: c.committed()).count == 40)
        #expect(Harness.files(in: c.committed()).count == 40, "each file once")
        let log = d.output
        #expect(log.contains("fail_fdatasync: injected EIO on syncfs"), "a batch of several files was synced as one:\n\(log.suffix(3000))")
        #expect(log.contains("the file system sync of a commit batch failed; each file was synced on its own"), "\(log.suffix(3000))")
        #expect(log.components(separatedBy: "fail_fdatasync: injected EIO on /").count == 2, "the odd file's own sync failed once:\n\(log.suffix(3000))")
        #expect(out.components(separatedBy: "collector could not commit a segment; offering it again").count == 2,
                "only the file whose own sync failed was sent again:\n\(out)")
        #expect(c.partials().isEmpty)
    }

    /// The collector is killed (strace, SIGKILL as it enters the call) in the first, second
    /// or third syncfs: each is either a batch's first (its data written into unnamed
    /// partials, not known durable, nothing linked yet) or a batch's second (its files linked
    /// into place, their links not known durable, nothing in the ledger). The restarted
    /// collector takes the first kind of batch again from the agent, and finds the second
    /// kind's files on disk; every file arrives, once.
    @Test(arguments: [1, 2, 3])
    func collectorKilledInABatchsFileSystemSync_everythingArrivesOnce(when: Int) throws {
        let c = try Cluster("commit-syncfs-kill-\(when)")
        defer { c.remove() }
        let port = try c.startCollector(under: ["/usr/bin/strace", "-f", "-qq", "-o", "/dev/null", "-e", "trace=syncfs", "-e", "inject=syncfs:signal=KILL:when=\(when)"])
        let spool = try c.spool()
        var p = try c.payload()
        for i in 0..<400 { try p.add(String(format: "f%03d", i), size: 4096, seed: UInt64(i), into: spool) }
        let args = c.agentArgs(spools: [("spool", spool)])
        let agent = try c.startAgent(args)
        defer { agent.stop() }
        #expect(c.collector!.wait(timeout: 120) != nil, "the collector reached its syncfs and was killed:\n\(c.collector!.output.suffix(3000))")
        let before = Harness.files(in: c.committed()).count
        #expect(before < 400)
        try c.startCollector(port: port)
        let (done, lost) = c.waitForSpoolToEmpty(spool, p, timeout: 180)
        #expect(lost.isEmpty, "acknowledged and deleted, yet not committed: \(lost.prefix(5))")
        #expect(done, "agent output:\n\(agent.output.suffix(3000))")
        #expect(try p.identical(in: c.committed()).count == 400)
        #expect(Harness.files(in: c.committed()).count == 400, "each file once")
        #expect(c.partials().isEmpty, "no stray partials after recovery")
        print("killed in syncfs number \(when): \(before) files in place before the restart")
    }
}
