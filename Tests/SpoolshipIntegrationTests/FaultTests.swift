import Foundation
import Glibc
import SpoolshipCore
import Testing

/// Rows 2-7 of RELIABILITY.md: cuts, blackholes, boundaries, slicing and kills.
@Suite(.serialized) struct FaultTests {
    @Test func baseline_512MiBInManySegments_crossesTheWireOnce() throws {
        let c = try Cluster("fault-baseline")
        defer { c.remove() }
        try c.startCollector()
        let proxy = try c.startProxy()
        let spool = try c.spool()
        var p = try c.payload()
        for i in 0..<64 { try p.add("seg-\(i)", size: 8 << 20, seed: UInt64(i), into: spool) }
        let (status, out) = try c.runOnce(c.agentArgs(spools: [("spool", spool)], target: proxy.port))
        #expect(status == 0, "\(out)")
        #expect(try p.identical(in: c.committed()).count == 64)
        #expect(Harness.files(in: spool).isEmpty, "agent spool empty")
        let ratio = Double(proxy.bytesFromClient) / Double(p.totalBytes)
        print(String(format: "baseline: bytes on wire / payload = %.5f", ratio))
        #expect(ratio >= 1.0 && ratio < 1.001, "only framing overhead besides the payload")
    }

    @Test func agentKilledRepeatedly_atProgressPoints_neverLosesOrDuplicates() throws {
        let c = try Cluster("fault-agent-kills")
        defer { c.remove() }
        try c.startCollector()
        let spool = try c.spool()
        var p = try c.payload()
        var rng = Harness.SplitMix64(seed: UInt64(Date().timeIntervalSince1970))
        for i in 0..<400 { try p.add(String(format: "m%04d", i), size: Int(rng.next() % 200_000), seed: UInt64(i), into: spool) }
        for i in 0..<4 { try p.add("large-\(i)", size: 32 << 20, seed: UInt64(1000 + i), into: spool) }
        let args = c.agentArgs(spools: [("spool", spool)])
        let dest = c.committed()
        var lost: [String] = []
        func checkInvariant() {
            // Acknowledged-then-deleted files must be committed: nothing vanishes.
            lost += c.vanished(p, from: spool)
        }
        var kills = 0
        var agent = try c.startAgent(args)
        for k in 1...8 {
            // Kill at a point of progress: after a further share of the files has left the spool.
            let target = p.names.count - k * p.names.count / 10
            let reached = Harness.waitUntil(timeout: 60) { checkInvariant(); return Harness.files(in: spool).count <= target }
            if !reached || !agent.isRunning { break }
            agent.kill(SIGKILL)
            _ = agent.wait(timeout: 10)
            kills += 1
            agent = try c.startAgent(args)
        }
        let done = Harness.waitUntil(timeout: 120) { checkInvariant(); return Harness.files(in: spool).isEmpty }
        agent.kill(SIGTERM)
        #expect(agent.wait(timeout: 30) == 0, "every restart came up and stopped cleanly:\n\(agent.output)")
        #expect(done)
        #expect(lost.isEmpty, "lost: \(lost.prefix(5))")
        #expect(kills >= 4)
        #expect(try p.identical(in: dest).count == p.names.count)
        #expect(Harness.files(in: dest).count == p.names.count, "each file once")
        print("agent kill -9: \(kills) kills during \(p.names.count) files")
    }

    @Test func resetsAtRandomPoints_resumeInsteadOfRestarting() throws {
        let c = try Cluster("fault-reset")
        defer { c.remove() }
        try c.startCollector()
        let proxy = try c.startProxy()
        let spool = try c.spool()
        var p = try c.payload()
        for i in 0..<4 { try p.add("big-\(i)", size: 48 << 20, seed: UInt64(i), into: spool) }
        for i in 0..<100 { try p.add("small-\(i)", size: 1000 + i * 100, seed: UInt64(100 + i), into: spool) }
        let seed = UInt64(Date().timeIntervalSince1970)
        var rng = Harness.SplitMix64(seed: seed)
        // Each of the first connections is reset after a random number of bytes.
        func nextCut() -> Int { 1 + Int(rng.next() % UInt64(30 << 20)) }
        proxy.setFault(.resetAfter(bytes: nextCut()), connections: 1)
        let agent = try c.startAgent(c.agentArgs(spools: [("spool", spool)], target: proxy.port) + ["--once"])
        var armed = 1
        let finished = Harness.waitUntil(timeout: 240) {
            if proxy.connections >= armed && armed < 10 {
                proxy.setFault(.resetAfter(bytes: nextCut()), connections: 1)
                armed += 1
            }
            return !agent.isRunning
        }
        #expect(finished && agent.wait(timeout: 1) == 0, "\(agent.output)")
        #expect(try p.identical(in: c.committed()).count == p.names.count)
        let cuts = proxy.connections - 1
        let resent = proxy.bytesFromClient - p.totalBytes
        print("resets (seed \(seed)): \(cuts) cuts, bytes on wire / payload = \(Double(proxy.bytesFromClient) / Double(p.totalBytes)), resent per cut = \(resent / max(cuts, 1)) bytes")
        #expect(cuts >= 4, "the transfer was cut several times")
        #expect(resent <= cuts * (4 << 20), "a cut costs only what was in flight (a few MiB), never a segment")
        #expect(Double(proxy.bytesFromClient) <= 1.05 * Double(p.totalBytes))
    }

    @Test func blackhole_isDetectedByTheDeadline_andTheAgentReconnects() throws {
        let c = try Cluster("fault-blackhole")
        defer { c.remove() }
        try c.startCollector()
        let proxy = try c.startProxy()
        let spool = try c.spool()
        var p = try c.payload()
        try p.add("f", size: 8 << 20, seed: 5, into: spool)
        proxy.setFault(.blackholeAfter(bytes: 1 << 20), connections: 1)
        let ioTimeout = 2.0
        let started = Date()
        let (status, out) = try c.runOnce(c.agentArgs(spools: [("spool", spool)], target: proxy.port, extra: ["--io-timeout", "\(ioTimeout)"]), timeout: 60)
        let took = Date().timeIntervalSince(started)
        print("blackhole: detected and finished in \(took) s with an io timeout of \(ioTimeout) s")
        if took > 2 * ioTimeout + 3 { print(out); print(c.collector?.output ?? "") }
        #expect(status == 0, "\(out)")
        #expect(proxy.connections == 2)
        #expect(took <= 2 * ioTimeout + 3, "detection within twice the deadline (plus the transfer)")
        #expect(try p.identical(in: c.committed()).count == 1)
    }

    @Test func connectionClosedAtEveryFrameBoundary_plusMinusOne_resumesCorrectly() throws {
        let c = try Cluster("fault-boundaries")
        defer { c.remove() }
        try c.startCollector()
        let proxy = try c.startProxy()
        // The agent's byte stream for two files a and b: preamble, HELLO, two OFFERs, then a
        // DATA header and payload for each.
        let sizes = [3000, 5000]
        func boundaries(id: String, names: [String], crcs: [UInt32]) -> [Int] {
            var b: [Int] = [Wire.preamble.count]
            var pos = Wire.preamble.count + FrameWriter.encode(.hello(Hello(agentID: id))).count
            b.append(pos)
            for (i, n) in names.enumerated() {
                pos += FrameWriter.encode(.offer(Offer(tag: UInt64(i + 1), kind: .blob, key: SegmentKey(spool: "spool", name: n, size: UInt64(sizes[i]), crc: crcs[i])))).count
                b.append(pos)
            }
            for (i, s) in sizes.enumerated() {
                pos += FrameWriter.encode(.data(tag: UInt64(i + 1), offset: 0, length: UInt64(s))).count
                b.append(pos)
                pos += s
                b.append(pos)
            }
            return b
        }
        let spool = try c.spool()
        var round = 0
        var checked = 0
        var cuts: [Int] = []
        // Compute the boundaries once, from a first pair of names of the same length.
        let probeNames = ["a-000", "b-000"]
        let probe = boundaries(id: "agent-1", names: probeNames, crcs: [0, 0])
        for b in probe { cuts += [b - 1, b, b + 1] }
        for cut in Set(cuts).sorted() where cut > 0 && cut < probe.last! {
            round += 1
            var p = try c.payload("o\(round)")
            let names = [String(format: "a-%03d", round), String(format: "b-%03d", round)]
            for (i, n) in names.enumerated() { try p.add(n, size: sizes[i], seed: UInt64(round * 2 + i), into: spool) }
            proxy.setFault(.closeAfter(bytes: cut), connections: 1)
            let before = proxy.connections
            let (status, out) = try c.runOnce(c.agentArgs(spools: [("spool", spool)], target: proxy.port), timeout: 60)
            #expect(status == 0, "cut at byte \(cut): \(out)")
            #expect(proxy.connections - before == 2, "cut at byte \(cut) forced exactly one reconnect")
            #expect(try p.identical(in: c.committed()).count == 2, "cut at byte \(cut)")
            checked += 1
        }
        print("boundaries: \(checked) cut points checked")
        #expect(checked >= 15)
        #expect(Harness.files(in: spool).isEmpty)
    }

    /// The proxy forwards the agent's bytes in random slices of 1 to 1500 bytes: frames (or,
    /// over TLS, records) arrive in many pieces; no error, no reconnection.
    @Test(arguments: [false, true])
    func reslicedStream_fromOneTo1500ByteSlices_hasNoFramingError(tls: Bool) throws {
        let c = try Cluster("fault-slices-\(tls ? "tls" : "plain")")
        defer { c.remove() }
        let pki = tls ? try TestPKI(dir: c.root.appendingPathComponent("pki")) : nil
        if let pki { try c.startTLSCollector(pki) } else { try c.startCollector() }
        let proxy = try c.startProxy()
        proxy.setSlicing(maxSlice: 1500, seed: 42)
        let spool = try c.spool()
        var p = try c.payload()
        for i in 0..<40 { try p.add("s\(i)", size: 100 + i * 997, seed: UInt64(i), into: spool) }
        let spools = [("spool", spool)]
        let args = pki.map { c.tlsAgentArgs($0, spools: spools, target: proxy.port) } ?? c.agentArgs(spools: spools, target: proxy.port)
        let (status, out) = try c.runOnce(args + ["--timeout", "60"], timeout: 120)
        #expect(status == 0, "\(out)")
        #expect(proxy.connections == 1, "no framing error forced a reconnect:\n\(out)")
        #expect(try p.identical(in: c.committed()).count == p.names.count)
    }

    @Test func stalePartials_areRemovedAtStart_freshOnesKept() throws {
        let c = try Cluster("fault-stale-partials")
        defer { c.remove() }
        let dir = c.dataDir.appendingPathComponent(".spoolship/partial/gone-agent")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let stale = dir.appendingPathComponent("00000000000000000000000000000001.part")
        let fresh = dir.appendingPathComponent("00000000000000000000000000000002.part")
        try Harness.writeRandomFile(stale, size: 100, seed: 1)
        try Harness.writeRandomFile(fresh, size: 100, seed: 2)
        try FileManager.default.setAttributes([.modificationDate: Date(timeIntervalSinceNow: -3 * 86400)], ofItemAtPath: stale.path)
        try c.startCollector(extra: ["--partial-max-age", "\(2 * 86400)"])
        #expect(Harness.files(in: dir) == [fresh.lastPathComponent])
        #expect(c.collector!.output.contains("removed a stale partial"))
    }

    enum Victim: String, CaseIterable { case collector, agent, both }

    @Test(arguments: Victim.allCases)
    func killNine_midTransfer_thenRestart_everythingArrivesOnce(victim: Victim) throws {
        let c = try Cluster("fault-kill-\(victim)")
        defer { c.remove() }
        let port = try c.startCollector()
        let spool = try c.spool()
        var p = try c.payload()
        for i in 0..<3 { try p.add("k\(i)", size: 96 << 20, seed: UInt64(i), into: spool) }
        for i in 0..<50 { try p.add("s\(i)", size: 4096 + i, seed: UInt64(100 + i), into: spool) }
        let args = c.agentArgs(spools: [("spool", spool)])
        var agent = try c.startAgent(args)
        var kills = 0
        for round in 0..<3 {
            // Wait until a segment is partly received, then kill.
            let mid = Harness.waitUntil(timeout: 60) {
                c.partials().contains { name in
                    let size = (try? FileManager.default.attributesOfItem(atPath: c.dataDir.appendingPathComponent(".spoolship/partial/agent-1/\(name)").path)[.size] as? Int) ?? 0
                    return size > (8 << 20) * (round + 1)
                }
            }
            if !mid { break }
            if victim != .agent { c.collector?.kill(SIGKILL); _ = c.collector?.wait(timeout: 10) }
            if victim != .collector { agent.kill(SIGKILL); _ = agent.wait(timeout: 10) }
            kills += 1
            if victim != .agent { try c.startCollector(port: port) }
            if victim != .collector { agent = try c.startAgent(args) }
        }
        #expect(kills >= 1, "a transfer was caught in the middle")
        let (done, lost) = c.waitForSpoolToEmpty(spool, p, timeout: 180)
        #expect(lost.isEmpty, "acknowledged and deleted, yet not committed: \(lost.prefix(5))")
        agent.kill(SIGTERM)
        _ = agent.wait(timeout: 30)
        #expect(done, "agent output:\n\(agent.output)")
        #expect(try p.identical(in: c.committed()).count == p.names.count)
        #expect(Harness.files(in: c.committed()).count == p.names.count, "each file once")
        #expect(c.partials().isEmpty, "no stray partials after recovery")
        print("kill -9 \(victim): \(kills) kills")
    }
}

/// Row 10 of RELIABILITY.md: the collector's data dir on a small tmpfs. Offers that would eat
/// into the free-space reserve are refused with "no space"; the agent keeps its files and
/// retries with backoff; once a consumer frees space, everything arrives, once.
@Suite(.serialized) struct FullDiskTests {
    @Test func dataDirFills_agentBacksOff_spaceFreed_everythingArrivesOnce() throws {
        let c = try Cluster("full-data-dir")
        defer { c.remove() }
        try FileManager.default.createDirectory(at: c.dataDir, withIntermediateDirectories: true)
        #expect(Process.run("mount", ["-t", "tmpfs", "-o", "size=40m", "spoolship-full", c.dataDir.path]) == 0, "the tests run as root and mount a small tmpfs")
        defer { _ = Process.run("umount", ["-l", c.dataDir.path]) }
        try c.startCollector(extra: ["--free-space-reserve", "8M"])
        let spool = try c.spool()
        var p = try c.payload()
        for i in 0..<8 { try p.add("f\(i).bin", size: 8 << 20, seed: UInt64(100 + i), into: spool) }
        let agent = try c.startAgent(c.agentArgs(spools: [("spool", spool)]))
        defer { agent.stop() }
        let dest = c.committed()
        // The disk fills: some files commit, then the collector refuses the rest.
        #expect(Harness.waitUntil(timeout: 60) { (c.collector?.output ?? "").contains("refusing a segment: not enough free space above the reserve") }, "\(c.collector?.output ?? "")")
        #expect(Harness.waitUntil(timeout: 30) { agent.output.contains("collector cannot take a segment now; offering it again later") }, "\(agent.output)")
        var taken: Set<String> = []
        // Nothing acknowledged is missing: a file gone from the spool is committed, whole
        // (or was taken away by the consumer below).
        func checkInvariant() throws {
            let left = Set(Harness.files(in: spool))
            for n in p.names where !left.contains(n) && !taken.contains(n) {
                let there = FileManager.default.fileExists(atPath: dest.appendingPathComponent(n).path)
                #expect(there, "\(n) left the spool, so it must be committed:\n\(agent.output.suffix(1500))\n\(c.collector?.output.suffix(1500) ?? "")")
                if there { #expect(try Harness.sameContents(p.originals.appendingPathComponent(n), dest.appendingPathComponent(n)), "\(n) committed whole") }
            }
        }
        try checkInvariant()
        // What fits commits; the rest waits in the spool.
        #expect(Harness.waitUntil(timeout: 60) { Harness.files(in: dest).count >= 2 }, "\(agent.output.suffix(1500))")
        let firstBatch = Harness.files(in: dest)
        #expect(firstBatch.count < 8 && !Harness.files(in: spool).isEmpty, "some committed, some waiting: \(firstBatch)")
        // A consumer takes the committed files away; the agent's retries then get through.
        let done = try Harness.waitUntil(timeout: 120) {
            try checkInvariant()
            for n in Harness.files(in: dest) where !taken.contains(n) {
                #expect(try Harness.sameContents(p.originals.appendingPathComponent(n), dest.appendingPathComponent(n)))
                try FileManager.default.removeItem(at: dest.appendingPathComponent(n))
                taken.insert(n)
            }
            return taken.count == 8 && Harness.files(in: spool).isEmpty
        }
        #expect(done, "all 8 arrived once space came back: \(taken.sorted())\n\(agent.output.suffix(2000))")
        #expect(c.partials().isEmpty)
        print("full data dir: \(firstBatch.count) of 8 fitted at first; all 8 arrived as space was freed")
    }

    @Test func partialLimitPerAgent_dropsLeftoversFirst_thenDefersOffers_andEverythingArrives() throws {
        let c = try Cluster("partial-limit")
        defer { c.remove() }
        // Three partials agent-1 left behind earlier (their segments are gone from its spool).
        let pdir = c.dataDir.appendingPathComponent(".spoolship/partial/agent-1")
        try FileManager.default.createDirectory(at: pdir, withIntermediateDirectories: true)
        for i in 0..<3 {
            try Harness.writeRandomFile(pdir.appendingPathComponent(String(repeating: "\(i)", count: 32) + ".part"), size: 6 << 20, seed: UInt64(i))
        }
        try c.startCollector(extra: ["--max-partial-bytes", "20M", "--free-space-reserve", "0"])
        let spool = try c.spool()
        var p = try c.payload()
        for i in 0..<10 { try p.add("f\(i).bin", size: 8 << 20, seed: UInt64(200 + i), into: spool) }
        let agent = try c.startAgent(c.agentArgs(spools: [("spool", spool)]))
        defer { agent.stop() }
        let dest = c.committed()
        func partialBytes() -> Int {
            Harness.files(in: pdir).reduce(0) { sum, n in
                sum + ((try? FileManager.default.attributesOfItem(atPath: pdir.appendingPathComponent(n).path))?[.size] as? Int ?? 0)
            }
        }
        var most = 0
        let done = Harness.waitUntil(timeout: 180) {
            most = max(most, partialBytes())
            return Harness.files(in: spool).isEmpty && Harness.files(in: dest).count == 10
        }
        let log = c.collector?.output ?? ""
        #expect(done, "all 10 files arrived:\n\(agent.output.suffix(2000))\n\(log.suffix(2000))")
        #expect(try p.identical(in: dest).count == 10)
        #expect(most <= 20 << 20, "the agent's partials never held more than the limit: at most \(most) bytes")
        #expect(log.components(separatedBy: "dropped a left-over partial").count - 1 == 3, "the three left-overs were dropped first:\n\(log.suffix(3000))")
        #expect(log.contains("deferring a segment: the agent's unfinished data would pass its partial limit"), "\(log.suffix(3000))")
        #expect(agent.output.contains("collector cannot take a segment now; offering it again later"), "\(agent.output.suffix(2000))")
        #expect(c.partials().isEmpty)
        print("partial limit: the agent's partials held at most \(most) bytes against a 20 MiB limit; 3 left-overs dropped; 10 of 10 arrived")
    }
}
