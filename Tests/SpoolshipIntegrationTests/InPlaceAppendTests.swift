import Foundation
import Glibc
import Testing

/// Producers that append to a blob in place, in many open/append/close cycles, against an
/// agent running as a daemon: every byte they wrote reaches the collector in some committed
/// version of the file (`out.txt`, then `out.txt~1`, ... as it grows after each seal), and the
/// spool ends empty. The agent never removes a file that grew after its seal or that a producer
/// still holds open.
@Suite(.serialized) struct InPlaceAppendTests {
    /// The lines of every committed version of `base` in `dir`, and how many versions there are.
    static func linesFound(_ dir: URL, _ base: String) -> (Set<String>, Int) {
        let versions = Harness.files(in: dir).filter { $0 == base || $0.hasPrefix(base + "~") }
        var lines = Set<String>()
        for v in versions {
            guard let text = try? String(contentsOf: dir.appendingPathComponent(v), encoding: .utf8) else { continue }
            for l in text.split(separator: "\n") { lines.insert(String(l)) }
        }
        return (lines, versions.count)
    }

    /// The contents of the regular files in `dir`, by name.
    static func contents(_ dir: URL) -> [String: String] {
        var byName: [String: String] = [:]
        for v in Harness.files(in: dir) { byName[v] = try? String(contentsOf: dir.appendingPathComponent(v), encoding: .utf8) }
        return byName
    }

    /// A Python producer: `count` cycles of open(path, 'ab'), one chunk `chunk %06d\n`,
    /// close, then a pause of `pause` seconds (the producer's pace between its cycles).
    static func appendScript(count: Int, pause: String) -> String {
        """
        import sys, time
        for i in range(\(count)):
            with open(sys.argv[1], 'ab') as f:
                f.write(b'chunk %06d\\n' % i)
            time.sleep(\(pause))
        """
    }

    /// An archive holds what shipped: every archived file is byte-for-byte a committed
    /// version, and every expected line is in some archived file.
    static func expectArchiveHoldsWhatShipped(committed: [String: String], archived: [String: String], expected: [String]) {
        let shipped = Set(committed.values)
        let strays = archived.filter { !shipped.contains($0.value) }.keys.sorted()
        #expect(!archived.isEmpty)
        #expect(strays.isEmpty, "archived files that match no committed version: \(strays)")
        let inArchive = Set(archived.values.flatMap { $0.split(separator: "\n").map(String.init) })
        let missing = Set(expected).subtracting(inArchive)
        #expect(missing.isEmpty, "\(missing.count) chunk(s) in no archived file, e.g. \(missing.sorted().prefix(5))")
    }

    /// Runs `producer` (argv) against a daemon agent with one blob spool, waits for it to end,
    /// then for the spool to empty and every line to be found; returns (found, versions).
    /// `texts` gets the committed versions' contents, by name, before the cluster goes.
    /// `archive`: the agent archives acknowledged files into `archive` in the cluster's root,
    /// and `archived` gets their contents, by name.
    func run(_ name: String, texts: ([String: String]) -> Void = { _ in }, lines expected: [String], file: String, agentFlags: [String] = [],
             archived: (([String: String]) -> Void)? = nil, producer: (URL) -> [String]) throws -> (Int, Int) {
        let c = try Cluster(name)
        defer { c.remove() }
        try c.startCollector()
        let spool = try c.spool()
        let archive = c.root.appendingPathComponent("archive")
        let agent = try c.startAgent(c.agentArgs(spools: [("spool", spool)], extra: agentFlags + (archived == nil ? [] : ["--archive-dir", archive.path])))
        defer { agent.stop() }
        let argv = producer(spool.appendingPathComponent(file))
        let p = try Daemon(argv[0], Array(argv.dropFirst()), log: c.nextLog("producer"))
        #expect(p.wait(timeout: 300) == 0, "the producer: \(p.output)")
        let all = Set(expected)
        var found = (Set<String>(), 0)
        let done = Harness.waitUntil(timeout: 60) {
            found = Self.linesFound(c.committed(), file)
            return Harness.files(in: spool).isEmpty && found.0.isSuperset(of: all)
        }
        let missing = all.subtracting(found.0)
        #expect(done, "spool: \(Harness.files(in: spool)); \(missing.count) line(s) missing, e.g. \(missing.sorted().prefix(5))\n\(agent.output.suffix(3000))")
        #expect(!agent.output.contains("error"), "no error in the agent's log:\n\(agent.output.suffix(3000))")
        texts(Self.contents(c.committed()))
        archived?(Self.contents(archive.appendingPathComponent("spool")))
        return (found.0.intersection(all).count, found.1)
    }

    /// `printf >> out.txt` in a shell loop: one open, append and close per line, as fast as
    /// the shell goes, and with pauses of 2 and 10 ms.
    @Test(arguments: [(3000, "0"), (2000, "0.002"), (500, "0.01")])
    func shellLoop_appendingInPlace_everyLineArrives(_ count: Int, _ pause: String) throws {
        let expected = (0..<count).map { String(format: "line %06d", $0) }
        let (found, versions) = try run("append-shell", lines: expected, file: "out.txt") { path in
            let wait = pause == "0" ? "" : "sleep \(pause); "
            return ["/bin/sh", "-c", "i=0; while [ $i -lt \(count) ]; do printf 'line %06d\\n' $i >> '\(path.path)'; \(wait)i=$((i+1)); done"]
        }
        print("in-place append, shell, pause \(pause) s: lines written \(count), found \(found), versions \(versions)")
    }

    /// With `--archive-dir`, where acknowledged files are renamed straight into the archive and
    /// checked there: a file appended to in that instant goes back to the spool and ships
    /// again. So the archive holds exactly versions that shipped (each archived file is
    /// byte-for-byte a committed version), and all that the producer wrote (every chunk is in
    /// some archived file).
    @Test(arguments: [(2000, "0.001"), (300, "0.02")])
    func appendCycles_withAnArchiveDir_theArchiveHoldsWhatShipped(_ count: Int, _ pause: String) throws {
        let expected = (0..<count).map { String(format: "chunk %06d", $0) }
        let script = Self.appendScript(count: count, pause: pause)
        var committed: [String: String] = [:]
        var archived: [String: String] = [:]
        let (found, versions) = try run("append-archive", texts: { committed = $0 }, lines: expected, file: "out.bin",
                                        archived: { archived = $0 }) { path in
            ["/usr/bin/python3", "-c", script, path.path]
        }
        Self.expectArchiveHoldsWhatShipped(committed: committed, archived: archived, expected: expected)
        print("in-place append, python 'ab', pause \(pause) s, archived: chunks written \(count), found \(found), versions \(versions), archived files \(archived.count)")
    }

    /// The same against an archiving agent that is killed (-9) again and again, at moments
    /// that fall anywhere in its work (moves into the archive and their checks included), and
    /// started again each time: every chunk arrives, the spool ends empty, every archived
    /// file is a committed version, and every chunk is in some archived file.
    @Test func appendCycles_withAnArchiveDir_agentKilledAgainAndAgain_theArchiveHoldsWhatShipped() throws {
        let count = 600
        let expected = (0..<count).map { String(format: "chunk %06d", $0) }
        let script = Self.appendScript(count: count, pause: "0.01")
        let c = try Cluster("append-archive-kill")
        defer { c.remove() }
        try c.startCollector()
        let spool = try c.spool()
        let archive = c.root.appendingPathComponent("archive")
        let args = c.agentArgs(spools: [("spool", spool)], extra: ["--archive-dir", archive.path])
        var agent = try c.startAgent(args)
        defer { agent.stop() }
        let producer = try Daemon("/usr/bin/python3", ["-c", script, spool.appendingPathComponent("out.bin").path], log: c.nextLog("producer"))
        defer { producer.stop() }
        var kills = 0
        // While the producer runs: the agent lives for 50 to 500 ms, then is killed and
        // started again.
        while producer.wait(timeout: Double.random(in: 0.05...0.5)) == nil {
            agent.kill(SIGKILL)
            #expect(agent.wait(timeout: 10) != nil)
            agent = try c.startAgent(args)
            kills += 1
        }
        #expect(producer.wait(timeout: 0) == 0, "the producer: \(producer.output)")
        var found = (Set<String>(), 0)
        let done = Harness.waitUntil(timeout: 60) {
            found = Self.linesFound(c.committed(), "out.bin")
            return Harness.files(in: spool).isEmpty && found.0.isSuperset(of: expected)
        }
        let missing = Set(expected).subtracting(found.0)
        #expect(done, "spool: \(Harness.files(in: spool)); \(missing.count) chunk(s) not committed, e.g. \(missing.sorted().prefix(5))\n\(agent.output.suffix(3000))")
        agent.stop()
        let archived = Self.contents(archive.appendingPathComponent("spool"))
        Self.expectArchiveHoldsWhatShipped(committed: Self.contents(c.committed()), archived: archived, expected: expected)
        print("in-place append, archived, agent killed \(kills) times: chunks written \(count), versions \(found.1), archived files \(archived.count)")
    }

    /// Python's open(path, 'ab') per chunk, with a pause of 1 ms.
    @Test func pythonAppendCycles_everyChunkArrives() throws {
        let count = 2000
        let expected = (0..<count).map { String(format: "chunk %06d", $0) }
        let script = Self.appendScript(count: count, pause: "0.001")
        let (found, versions) = try run("append-python", lines: expected, file: "out.bin") { path in
            ["/usr/bin/python3", "-c", script, path.path]
        }
        print("in-place append, python 'ab', pause 0.001 s: lines written \(count), found \(found), versions \(versions)")
    }

    /// With a settle time, the same producers, pausing between their cycles for less than it,
    /// give one complete file: each line once, in order.
    @Test(arguments: ["shell", "python"])
    func withASettleTime_aProducerThatPausesBetweenCycles_givesOneCompleteFile(_ kind: String) throws {
        let count = 200
        let expected = (0..<count).map { String(format: "line %06d", $0) }
        var lastText = ""
        let (found, versions) = try run("append-settle-\(kind)", texts: { lastText = $0["out.txt"] ?? "" }, lines: expected, file: "out.txt", agentFlags: ["--settle", "1"]) { path in
            kind == "shell"
                ? ["/bin/sh", "-c", "i=0; while [ $i -lt \(count) ]; do printf 'line %06d\\n' $i >> '\(path.path)'; sleep 0.01; i=$((i+1)); done"]
                : ["/usr/bin/python3", "-c", """
                    import sys, time
                    for i in range(\(count)):
                        with open(sys.argv[1], 'ab') as f:
                            f.write(b'line %06d\\n' % i)
                        time.sleep(0.01)
                    """, path.path]
        }
        print("in-place append with settle 1 s, \(kind), pause 0.01 s: lines written \(count), found \(found), versions \(versions)")
        #expect(versions == 1, "one complete file")
        #expect(lastText == expected.map { $0 + "\n" }.joined(), "each line once, in order")
    }

    /// `--once` with a settle time waits for files not left alone long enough yet, then ships
    /// them and exits 0.
    @Test func once_withASettleTime_waitsOutTheSettleTime_andShips() throws {
        let c = try Cluster("append-settle-once")
        defer { c.remove() }
        try c.startCollector()
        let spool = try c.spool()
        var p = try c.payload()
        for i in 0..<3 { try p.add("f-\(i).bin", size: 1000 * (i + 1), seed: UInt64(i + 1), into: spool) }
        // Written in place, as an append producer leaves it: no rename.
        try Data("written in place\n".utf8).write(to: spool.appendingPathComponent("in-place.txt"))
        let (status, out) = try c.runOnce(c.agentArgs(spools: [("spool", spool)], extra: ["--settle", "1"]), timeout: 120)
        #expect(status == 0, "\(out)")
        #expect(try p.identical(in: c.committed()).count == 3)
        #expect((try? String(contentsOf: c.committed().appendingPathComponent("in-place.txt"), encoding: .utf8)) == "written in place\n")
        #expect(Harness.files(in: spool).isEmpty)
    }
}
