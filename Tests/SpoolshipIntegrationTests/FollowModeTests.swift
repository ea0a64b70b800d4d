import Foundation
import Glibc
import Testing

/// Issue 18: log spools whose producers never reopen their files (`reopen = "never"`), with
/// real producers (log-producer, a shell's `>>`, Python's logging.FileHandler), Debian's own
/// logrotate run beside the agent, and the agent killed with SIGKILL.
@Suite struct FollowModeTests {
    static func followArgs(_ c: Cluster, _ spool: URL, size: String = "256K", age: Double = 0.5) throws -> [String] {
        try c.logSpoolArgs(spool, settings: "reopen = \"never\"\nrotate-size = \"\(size)\"\nrotate-age = \(age)\n")
    }

    /// Every `bytes.lost.at.least=N` the agents logged, summed.
    static func reportedLoss(_ agents: [Daemon]) -> Int {
        agents.reduce(0) { sum, a in
            a.output.split(separator: "\n").reduce(sum) { s, line in
                guard let r = line.range(of: "bytes.lost.at.least=") else { return s }
                return s + (Int(line[r.upperBound...].prefix { $0.isNumber }) ?? 0)
            }
        }
    }

    /// A producer that never reopens writes 100,000 records a second for 5 s into app.log,
    /// while Debian's logrotate rotates the file again and again (create; create with
    /// compress and delaycompress, which deletes the file at its second rotation while the
    /// producer still writes into it; copytruncate), and the agent is killed with SIGKILL,
    /// some rotations coming while it is down. With rename rotations every record arrives
    /// once, in order; with copytruncate no record arrives twice or out of order, and the
    /// records missing (logrotate's own copy-then-truncate window) are at least what the
    /// agent reported lost.
    @Test(arguments: Logrotate.Mode.allCases)
    func logrotateBeside_aProducerThatNeverReopens_agentKilled(mode: Logrotate.Mode) throws {
        let c = try Cluster("follow-\(mode)")
        defer { c.remove() }
        try c.startCollector()
        let spool = try c.spool()
        let file = spool.appendingPathComponent("app.log")
        let rotate = try Logrotate(cluster: c, file: file, mode: mode)
        let args = try Self.followArgs(c, spool)
        var agents = [try c.startAgent(args)]
        defer { agents.last?.stop() }
        let producer = try LogProducer(cluster: c, file: file, seconds: 5, rate: 100_000, reopen: "never")
        let started = Harness.monotonicNow()
        // The agent must have seen the producer's file under its name once before the first
        // fault: a file created and rotated away while no agent looked is never followed (a
        // documented limit), and this test is about what comes after.
        #expect(Harness.waitUntil(timeout: 30) { !LogStreamCheck.segments(in: c.committed(spool: "app"), stream: "app.log").isEmpty },
                "\(agents[0].output)")
        let seed = UInt64(Date().timeIntervalSince1970 * 1000)
        var rng = Harness.SplitMix64(seed: seed)
        var rotations = 0, kills = 0, rotatedWhileDown = 0, step = 0
        while producer.daemon.isRunning {
            usleep(UInt32(100_000 + rng.next() % 300_000))  // a random moment for the next fault: the fault, not a wait
            step += 1
            // No kill in the producer's last 1.5 s: a file that logrotate deleted while the agent
            // was down can be found again only while the producer still holds it (through
            // /proc); once the producer has closed it too, its last bytes are gone for anyone.
            if step % 3 == 1 && Harness.monotonicNow() - started < 3.5 {
                agents.last!.kill(SIGKILL)
                #expect(agents.last!.wait(timeout: 10) == 137)
                kills += 1
                // The first time, and then one time in two, logrotate runs while the agent is down.
                if kills == 1 || rng.next() % 2 == 0 {
                    try rotate.run()
                    rotations += 1
                    rotatedWhileDown += 1
                }
                agents.append(try c.startAgent(args))
            } else {
                try rotate.run()
                rotations += 1
            }
        }
        let written = try producer.finish()
        let agent = agents.last!
        let dir = c.committed(spool: "app")
        // Done when the last record has arrived and nothing is pending or followed but the
        // file under the name.
        let lastRecord = String(format: "%016d", written - 1)
        let done = Harness.waitUntil(timeout: 90) {
            guard let last = LogStreamCheck.segments(in: dir, stream: "app.log").last,
                  let tail = try? Data(contentsOf: dir.appendingPathComponent(last)).suffix(100),
                  String(decoding: tail.prefix(16), as: UTF8.self) == lastRecord,
                  let st = try? StatusTests.json(c.agentSocket()), let spools = st["spools"] as? [[String: Any]],
                  let s = spools.first, StatusTests.int(s, "pending_segments") == 0, StatusTests.int(s, "follow.files") == 1
            else { return false }
            return true
        }
        #expect(done, "the last record arrived and nothing is left:\n\(agent.output.suffix(3000))")
        let (data, segments) = try LogStreamCheck.contents(in: dir, stream: "app.log")
        let r = try LogStreamCheck.recordsWithGaps(data, recordSize: producer.recordSize)
        let reported = Self.reportedLoss(agents)
        print("follow \(mode): seed \(seed), \(rotations) logrotate runs (\(rotatedWhileDown) while the agent was down), \(kills) kills; records written \(written), received \(r.records), lost \(r.missing) in \(r.gaps) gap(s) (\(r.missing * producer.recordSize) bytes; reported lost at least \(reported) bytes), duplicated 0, \(segments.count) segments")
        #expect(kills >= 2 && rotations >= 4 && rotatedWhileDown >= 1)
        #expect(r.last == written - 1)
        #expect(Harness.files(in: dir).filter { $0.contains("~") }.isEmpty, "no segment name was used for two different ranges")
        if mode == .copytruncate {
            // (A truncation's window, and a range cut before it that no copy holds, can be two
            // gaps: their number is printed, not bounded.)
            #expect(reported <= r.missing * producer.recordSize, "the agent never reports more lost than is missing")
            #expect(r.missing == 0 || reported > 0 || agents.contains { $0.output.contains("truncated") }, "a loss is never silent")
        } else {
            #expect(r.records == written && r.missing == 0, "every record once, in order")
            #expect(reported == 0)
        }
        #expect(!agents.contains { $0.output.contains("Fatal error") })
    }

    /// Producers that hold their file open for ever: a shell loop appending with `>>`, and
    /// Python's logging.FileHandler. Their first records are committed while they still run
    /// and hold the file (each waits for the test to see them before it writes the rest);
    /// then every record of both arrives once, in order, and the files are left as they were.
    @Test func shellAndPythonProducers_shipWhileTheyRun_everyRecordOnce() throws {
        let c = try Cluster("follow-producers")
        defer { c.remove() }
        try c.startCollector()
        let spool = try c.spool()
        let agent = try c.startAgent(try Self.followArgs(c, spool, age: 0.2))
        defer { agent.stop() }
        let go = c.root.appendingPathComponent("go")
        let sh = try Daemon("/bin/sh", ["-c", """
            {
              i=0; while [ $i -lt 50 ]; do echo "shell record $i"; i=$((i+1)); done
              n=0; while [ ! -e "$2" ] && [ $n -lt 1200 ]; do sleep 0.05; n=$((n+1)); done  # at most 60 s
              while [ $i -lt 300 ]; do echo "shell record $i"; i=$((i+1)); done
            } >> "$1"
            """, "sh", spool.appendingPathComponent("shell.log").path, go.path], log: c.nextLog("sh"))
        defer { sh.stop() }
        let py = try Daemon("/usr/bin/python3", ["-c", """
            import logging, os, sys, time
            h = logging.FileHandler(sys.argv[1])
            h.setFormatter(logging.Formatter("%(message)s"))
            log = logging.getLogger("producer"); log.addHandler(h); log.setLevel(logging.INFO)
            for i in range(20): log.info("python record %d", i)
            deadline = time.monotonic() + 60
            while not os.path.exists(sys.argv[2]) and time.monotonic() < deadline: time.sleep(0.05)
            for i in range(20, 200): log.info("python record %d", i)
            """, spool.appendingPathComponent("python.log").path, go.path], log: c.nextLog("py"))
        defer { py.stop() }
        let dir = c.committed(spool: "app")
        func stream(_ name: String) -> String {
            String(decoding: (try? LogStreamCheck.contents(in: dir, stream: name).0) ?? Data(), as: UTF8.self)
        }
        #expect(Harness.waitUntil(timeout: 30) {
            stream("shell.log").contains("shell record 49\n") && stream("python.log").contains("python record 19\n")
        }, "the first records are committed while the producers hold their files:\n\(agent.output.suffix(2000))")
        #expect(sh.isRunning && py.isRunning, "both producers still run (they wait for the test)")
        #expect(FileManager.default.createFile(atPath: go.path, contents: nil))
        #expect(sh.wait(timeout: 30) == 0 && py.wait(timeout: 30) == 0, "\(sh.output)\(py.output)")
        let shell = (0..<300).map { "shell record \($0)\n" }.joined(), python = (0..<200).map { "python record \($0)\n" }.joined()
        #expect(Harness.waitUntil(timeout: 30) { stream("shell.log") == shell && stream("python.log") == python },
                "every record once, in order:\n\(agent.output.suffix(2000))")
        #expect(try String(contentsOf: spool.appendingPathComponent("shell.log"), encoding: .utf8) == shell, "the file is left as it was")
        #expect(Set(Harness.files(in: spool)) == ["shell.log", "python.log"], "nothing renamed, nothing made in the spool")
    }

    /// A file cut short under the follower (`: >`, as copytruncate does) and one rewritten in
    /// place under what was already shipped: each is noticed, logged, counted in the status
    /// and the metrics, and the file's new content ships from its start; every committed
    /// segment matches its checksum (`spoolship verify`).
    @Test func truncatedOrRewrittenInPlace_isNoticedCounted_andTheNewContentShips() throws {
        let c = try Cluster("follow-surprises")
        defer { c.remove() }
        try c.startCollector()
        let spool = try c.spool()
        let agent = try c.startAgent(try Self.followArgs(c, spool, age: 0.2))
        defer { agent.stop() }
        let path = spool.appendingPathComponent("app.log").path
        let fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o644)
        #expect(fd >= 0)
        defer { close(fd) }
        func append(_ s: String) { #expect(write(fd, s, s.utf8.count) == s.utf8.count) }
        let dir = c.committed(spool: "app")
        func stream() -> String { String(decoding: (try? LogStreamCheck.contents(in: dir, stream: "app.log").0) ?? Data(), as: UTF8.self) }
        func follow(_ key: String) -> Int? {
            guard let st = try? StatusTests.json(c.agentSocket()), let s = (st["spools"] as? [[String: Any]])?.first else { return nil }
            return StatusTests.int(s, "follow.\(key)")
        }
        let a = (0..<200).map { "first \($0)\n" }.joined()
        append(a)
        #expect(Harness.waitUntil(timeout: 30) { stream() == a }, "\(agent.output.suffix(2000))")
        // Cut short: noticed before anything new is written.
        #expect(ftruncate(fd, 0) == 0)
        #expect(Harness.waitUntil(timeout: 30) { follow("truncations") == 1 }, "\(agent.output.suffix(2000))")
        let b = (0..<50).map { "second \($0)\n" }.joined()
        append(b)
        #expect(Harness.waitUntil(timeout: 30) { stream() == a + b }, "the new content ships from its start:\n\(agent.output.suffix(2000))")
        // Rewritten in place under what was shipped (same length; through a descriptor without
        // O_APPEND, with which pwrite would append), then appended to.
        let changed = String(b.dropLast(10)) + "CHANGED!!\n"
        let rw = open(path, O_WRONLY | O_CLOEXEC)
        #expect(rw >= 0 && pwrite(rw, changed, changed.utf8.count, 0) == changed.utf8.count)
        close(rw)
        let d = (0..<20).map { "third \($0)\n" }.joined()
        append(d)
        #expect(Harness.waitUntil(timeout: 30) { stream() == a + b + changed + d }, "the rewritten file ships again whole:\n\(agent.output.suffix(2000))")
        #expect(follow("rewrites") == 1)
        #expect(agent.output.contains("was truncated") && agent.output.contains("rewritten in place"), "\(agent.output)")
        let status = try StatusTests.spoolship(["status", "--socket", c.agentSocket().path])
        #expect(status.stdout.contains("1 truncation") && status.stdout.contains("1 rewrite"), "\(status.stdout)")
        let verify = try StatusTests.spoolship(["verify", c.dataDir.path])
        #expect(verify.status == 0, "every committed segment matches its checksum:\n\(verify.stdout)\(verify.stderr)")
    }

    /// The payload never passes through the agent in user space: strace counts what its read
    /// calls return and what it maps of files while it ships a followed file's growth (256 MiB
    /// here: the range checksums go over each byte once, through a mapping for ranges of 1 MiB
    /// and more, through pread for smaller ones; the tail checks and newline searches read a
    /// little more), and what sendfile carried.
    @Test func aFollowedTransfer_isReadOnceForItsChecksums_andSentWithSendfile() throws {
        let c = try Cluster("follow-strace")
        defer { c.remove() }
        try c.startCollector()
        let spool = try c.spool()
        let agent = try c.startAgent(try Self.followArgs(c, spool, size: "8M"))
        defer { agent.stop() }
        #expect(Harness.waitUntil(timeout: 30) { agent.output.contains("connected to collector") }, "\(agent.output)")
        let trace = c.root.appendingPathComponent("agent.strace")
        let strace = try Daemon(signalsUnblocked: ["/usr/bin/strace", "-f", "-s", "0", "-o", trace.path,
                                                   "-e", "trace=read,pread64,readv,preadv,preadv2,sendfile,mmap", "-p", "\(agent.pid)"],
                                log: c.nextLog("strace"))
        defer { strace.stop() }
        let threads = { (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(agent.pid)/task").count) ?? 0 }
        #expect(Harness.waitUntil(timeout: 30) {
            strace.output.contains(" attached with ") || strace.output.components(separatedBy: " attached").count - 1 >= threads()
        }, "\(strace.output)")
        // 256 MiB in the suite; SPOOLSHIP_FOLLOW_STRACE_MIB=1024 for the 1 GiB.
        let mib = Int(ProcessInfo.processInfo.environment["SPOOLSHIP_FOLLOW_STRACE_MIB"] ?? "") ?? 256
        let records = (mib << 20) / 100, size = records * 100
        let producer = try LogProducer(cluster: c, file: spool.appendingPathComponent("app.log"), records: records, reopen: "never", batch: 64)
        #expect(try producer.finish() == records)
        let dir = c.committed(spool: "app")
        #expect(Harness.waitUntil(timeout: 120) {
            LogStreamCheck.segments(in: dir, stream: "app.log").reduce(0) { $0 + ((try? FileManager.default.attributesOfItem(atPath: dir.appendingPathComponent($1).path)[.size] as? Int) ?? 0) } == size
        }, "\(agent.output.suffix(2000))")
        strace.kill(SIGTERM)
        #expect(strace.wait(timeout: 30) != nil, "strace stops and detaches")
        let (read, mapped, sent) = Harness.straceTally(try String(contentsOf: trace, encoding: .utf8))
        print("follow strace: \(size) bytes followed; the agent's reads returned \(read) bytes, it mapped \(mapped) bytes of files, sendfile carried \(sent)")
        #expect(sent >= size, "the payload went out with sendfile")
        #expect(read + mapped >= size && read + mapped < size + size / 8, "gone over once, for the checksums: \(read) bytes read, \(mapped) mapped")
        #expect(try LogStreamCheck.verify(in: dir, stream: "app.log").records == records)
    }
}

extension LogStreamCheck {
    /// The records of a stream that may have gaps (copytruncate): whole, each numbered above
    /// the one before. Throws naming the first record that is torn, repeated or out of order.
    static func recordsWithGaps(_ data: Data, recordSize: Int) throws -> (records: Int, last: Int, missing: Int, gaps: Int) {
        var last = -1, missing = 0, gaps = 0
        let n = try forEachRecord(data, recordSize: recordSize) { i, seq in
            guard seq > last else { throw TestFailure("record \(seq) at position \(i) comes after record \(last): repeated or out of order") }
            if seq > last + 1 { missing += seq - last - 1; gaps += 1 }
            last = seq
        }
        return (n, last, missing, gaps)
    }
}
