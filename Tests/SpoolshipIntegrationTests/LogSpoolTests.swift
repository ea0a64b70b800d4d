import Foundation
import Glibc
import Testing

/// Log spools end to end: a real producer process appends numbered records; the collector's
/// segments, concatenated in name order, must hold every record exactly once.
@Suite(.serialized) struct LogSpoolTests {
    func logArgs(_ c: Cluster, spool: URL, extra: [String] = []) -> [String] {
        c.agentArgs(spools: []) + ["--logs", "app=\(spool.path)"] + extra
    }

    /// Waits until the agent has shipped the whole stream (its active file rotated away and
    /// every rotated file removed, which happens only after the collector committed it); then
    /// checks that the collector holds exactly the `records` records.
    func waitForStream(_ c: Cluster, spool: URL, stream: String = "api.log", records: Int, timeout: Double = 90, agent: Daemon? = nil) throws -> LogStreamCheck.Result {
        let active = spool.appendingPathComponent(stream)
        let rotated = spool.appendingPathComponent(".spoolship")
        let drained = Harness.waitUntil(timeout: timeout) {
            let size = (try? FileManager.default.attributesOfItem(atPath: active.path)[.size] as? Int) ?? 0
            return size == 0 && Harness.files(in: rotated).isEmpty
        }
        let r = try LogStreamCheck.verify(in: c.committed(spool: "app"), stream: stream)
        if !drained || r.records != records {
            throw TestFailure("collector holds \(r.records) of \(records) records (spool drained: \(drained)); agent output:\n\(agent?.output.suffix(3000) ?? "")")
        }
        return r
    }

    @Test func producerAtFullSpeed_rotatedBySizeAndAge_everyRecordOnce() throws {
        let c = try Cluster("logs-full-speed")
        defer { c.remove() }
        try c.startCollector()
        let spool = try c.spool()
        let agent = try c.startAgent(logArgs(c, spool: spool, extra: ["--rotate-size", "384K", "--rotate-age", "1"]))
        defer { agent.stop() }
        let producer = try LogProducer(cluster: c, file: spool.appendingPathComponent("api.log"), seconds: 3)
        let written = try producer.finish()
        let r = try waitForStream(c, spool: spool, records: written, agent: agent)
        print("full speed: \(written) records (\(r.bytes) bytes) in \(r.segments.count) segments, \(producer.reopens.count) reopens")
        #expect(r.segments.count > 10, "rotated many times by size")
        // Rotation by age: the tail, well under the size limit, arrives without more writes.
        #expect(Harness.waitUntil(timeout: 30) { Harness.files(in: spool.appendingPathComponent(".spoolship")).isEmpty }, "the rotated files are removed once committed")
        agent.kill(SIGTERM)
        #expect(agent.wait(timeout: 30) == 0)
    }

    @Test func agentKilledRepeatedly_duringTheRun_everyRecordOnce() throws {
        let c = try Cluster("logs-kill9")
        defer { c.remove() }
        try c.startCollector()
        let spool = try c.spool()
        // The producer reopens on SIGHUP only: a kill between a rename and the signal must
        // still get it to reopen after the restart.
        let pidFile = c.root.appendingPathComponent("producer.pid")
        let args = try c.logSpoolArgs(spool, settings: """
            rotate-size = "256K"
            rotate-age = 1
            reopen = "signal"
            pid-file = "\(pidFile.path)"
            """)
        var agent = try c.startAgent(args)
        let producer = try LogProducer(cluster: c, file: spool.appendingPathComponent("api.log"), seconds: 6, rate: 150_000,
                                       reopen: "signal", pidFile: pidFile)
        var kills = 0
        var rng = Harness.SplitMix64(seed: UInt64(Date().timeIntervalSince1970))
        while producer.daemon.isRunning && kills < 8 {
            usleep(UInt32(200_000 + rng.next() % 400_000))  // a random moment to kill at: the fault, not a wait
            agent.kill(SIGKILL)
            #expect(agent.wait(timeout: 10) == 137)
            kills += 1
            agent = try c.startAgent(args)
        }
        defer { agent.stop() }
        let written = try producer.finish()
        let r = try waitForStream(c, spool: spool, records: written, agent: agent)
        print("agent kill -9: \(kills) kills, \(written) records in \(r.segments.count) segments")
        #expect(kills >= 4)
        // A sequence number is never given twice: no segment name was reused for other bytes
        // (the collector would have kept the second as NAME~1).
        #expect(Harness.files(in: c.committed(spool: "app")).filter { $0.contains("~") }.isEmpty)
        #expect(!agent.output.contains("Fatal error"))
    }

    /// The agent dies at a chosen step of its first rotation (strace kills it on entering the
    /// call): before the rename (the step is journaled, the file not moved), or after the
    /// rename, on signalling the producer. A restart finishes the step: the file is moved,
    /// the producer told to reopen, and every record arrives once.
    @Test(arguments: ["renameat2", "kill"])
    func agentKilledInTheMiddleOfARotation_theRestartFinishesIt(call: String) throws {
        let c = try Cluster("logs-crash-\(call)")
        defer { c.remove() }
        try c.startCollector()
        let spool = try c.spool()
        let pidFile = c.root.appendingPathComponent("producer.pid")
        let args = try c.logSpoolArgs(spool, settings: """
            rotate-age = 0.5
            reopen = "signal"
            pid-file = "\(pidFile.path)"
            """)
        let producer = try LogProducer(cluster: c, file: spool.appendingPathComponent("api.log"), seconds: 4, rate: 5000,
                                       reopen: "signal", pidFile: pidFile)
        let traced = try Daemon("/usr/bin/strace", ["-f", "-o", "/dev/null", "-e", "trace=\(call)", "-e", "inject=\(call):signal=KILL:when=1",
                                                    Harness.binDir.appendingPathComponent("spoolship-agent").path] + args,
                                log: c.nextLog("agent-traced"))
        #expect(traced.wait(timeout: 30) != nil, "the agent died at its first \(call)")
        let rotatedName = spool.appendingPathComponent(".spoolship/api.log.0000000001")
        if call == "renameat2" {
            #expect(!FileManager.default.fileExists(atPath: rotatedName.path), "killed before the rename")
        } else {
            #expect(FileManager.default.fileExists(atPath: rotatedName.path), "killed after the rename")
            #expect(producer.reopens.isEmpty, "the producer was not told yet")
        }
        let agent = try c.startAgent(args)
        defer { agent.stop() }
        #expect(Harness.waitUntil(timeout: 20) { !producer.reopens.isEmpty }, "the restarted agent got the producer to reopen:\n\(agent.output)")
        let written = try producer.finish()
        let r = try waitForStream(c, spool: spool, records: written, agent: agent)
        #expect(r.segments.first == "api.log.0000000001", "the interrupted rotation kept its number")
        #expect(agent.output.contains("finishing a rotation interrupted by a restart") == (call == "renameat2"))
    }

    @Test func gzipAtSeal_zcatOfTheSegmentsInOrder_isTheProducersBytes() throws {
        let c = try Cluster("logs-gzip")
        defer { c.remove() }
        try c.startCollector()
        let spool = try c.spool()
        let args = try c.logSpoolArgs(spool, settings: """
            rotate-size = "300K"
            rotate-age = 1
            compress = true
            compress-level = 1
            """)
        let agent = try c.startAgent(args)
        defer { agent.stop() }
        let producer = try LogProducer(cluster: c, file: spool.appendingPathComponent("api.log"), seconds: 3, rate: 100_000)
        let written = try producer.finish()
        let r = try waitForStream(c, spool: spool, records: written, agent: agent)
        #expect(r.segments.count > 3)
        #expect(r.segments.allSatisfy { $0.hasSuffix(".gz") }, "every segment compressed: \(r.segments.prefix(5))")
        let shipped = r.segments.reduce(0) { $0 + ((try? FileManager.default.attributesOfItem(atPath: c.committed(spool: "app").appendingPathComponent($1).path)[.size] as? Int) ?? 0) }
        print("gzip: \(r.bytes) bytes of records shipped as \(shipped) bytes in \(r.segments.count) segments")
        #expect(shipped < r.bytes / 4, "the records compress well")
        // The collector verified each checksum against the file as shipped: verify agrees.
        let verify = try Daemon("spoolship", ["verify", c.dataDir.path], log: c.nextLog("verify"))
        #expect(verify.wait(timeout: 60) == 0, "\(verify.output)")
    }

    @Test func producerHoldingTheRenamedFile_itIsSealedOnlyAfterItCloses() throws {
        let c = try Cluster("logs-hold")
        defer { c.remove() }
        try c.startCollector()
        let spool = try c.spool()
        let pidFile = c.root.appendingPathComponent("producer.pid")
        let args = try c.logSpoolArgs(spool, settings: """
            rotate-age = 1
            reopen = "signal"
            pid-file = "\(pidFile.path)"
            signal = "HUP"
            """)
        let agent = try c.startAgent(args)
        defer { agent.stop() }
        // After each SIGHUP, the producer writes 2 more seconds into the renamed file.
        let producer = try LogProducer(cluster: c, file: spool.appendingPathComponent("api.log"), seconds: 5, rate: 2000,
                                       reopen: "hold", pidFile: pidFile, holdMs: 2000)
        let rotated = spool.appendingPathComponent(".spoolship")
        let dest = c.committed(spool: "app")
        // The first rotation: the renamed file appears, the producer still writes into it.
        #expect(Harness.waitUntil(timeout: 20) { Harness.files(in: rotated).contains("api.log.0000000001") })
        let renamedAt = Date()
        // While the producer holds it (2 s from the signal), segment 1 must not be committed.
        var committedEarly = false
        let reopened = Harness.waitUntil(timeout: 10) {
            if producer.reopens.isEmpty && Harness.files(in: dest).contains("api.log.0000000001") { committedEarly = true }
            return !producer.reopens.isEmpty
        }
        #expect(reopened, "the producer reopened after its hold")
        #expect(!committedEarly, "segment 1 was committed while its producer still had it open")
        #expect(Date().timeIntervalSince(renamedAt) >= 1.0, "the producer held the renamed file for a while (its hold is 2 s), so the check above watched something")
        // Closed by its last writer: now it is sealed and committed.
        #expect(Harness.waitUntil(timeout: 20) { Harness.files(in: dest).contains("api.log.0000000001") })
        let written = try producer.finish()
        let r = try waitForStream(c, spool: spool, records: written, agent: agent)
        #expect(producer.reopens.count >= 1)
        // Every record written during the hold went into the segment of the renamed file.
        print("hold: \(written) records, \(producer.reopens.count) reopens, \(r.segments.count) segments")
    }

    @Test func reopenByCommand_likeLogrotatesPostrotate() throws {
        let c = try Cluster("logs-command")
        defer { c.remove() }
        try c.startCollector()
        let spool = try c.spool()
        let pidFile = c.root.appendingPathComponent("producer.pid")
        let args = try c.logSpoolArgs(spool, settings: """
            rotate-age = 0.5
            reopen = "command"
            command = "kill -HUP $(cat '\(pidFile.path)')"
            """)
        let agent = try c.startAgent(args)
        defer { agent.stop() }
        let producer = try LogProducer(cluster: c, file: spool.appendingPathComponent("api.log"), seconds: 3, rate: 10_000,
                                       reopen: "signal", pidFile: pidFile)
        let written = try producer.finish()
        let r = try waitForStream(c, spool: spool, records: written, agent: agent)
        #expect(producer.reopens.count >= 3, "the command signalled the producer at each rotation")
        #expect(r.segments.count >= producer.reopens.count)
    }

    @Test func once_rotatesWhateverTheSizeOrAge_andLeavesTheProducerWriting() throws {
        let c = try Cluster("logs-once")
        defer { c.remove() }
        try c.startCollector()
        let spool = try c.spool()
        let producer = try LogProducer(cluster: c, file: spool.appendingPathComponent("api.log"), records: 1000)
        let written = try producer.finish()
        // A second stream, and a file that does not match the glob.
        try Data("one line\n".utf8).write(to: spool.appendingPathComponent("worker.log"))
        try Data("not a log\n".utf8).write(to: spool.appendingPathComponent("notes.txt"))
        let (status, out) = try c.runOnce(logArgs(c, spool: spool, extra: ["--rotate-size", "1G", "--rotate-age", "3600"]))
        #expect(status == 0, "\(out)")
        let r = try LogStreamCheck.verify(in: c.committed(spool: "app"), stream: "api.log")
        #expect(r.records == written)
        #expect(r.segments == ["api.log.0000000001"])
        #expect(Harness.files(in: c.committed(spool: "app")).contains("worker.log.0000000001"))
        #expect(!Harness.files(in: c.committed(spool: "app")).contains { $0.hasPrefix("notes.txt") })
        #expect(Harness.files(in: spool) == ["notes.txt"], "rotated logs were shipped and removed; the rest untouched")
        // A second run: the stream goes on at the next number.
        let more = try LogProducer(cluster: c, file: spool.appendingPathComponent("api.log"), records: 10)
        _ = try more.finish()
        let (status2, out2) = try c.runOnce(logArgs(c, spool: spool))
        #expect(status2 == 0, "\(out2)")
        #expect(Harness.files(in: c.committed(spool: "app")).contains("api.log.0000000002"))
    }
}
