import Foundation
import Glibc
import Testing

/// Row 18 of RELIABILITY.md: a long soak, outside the normal suite (`make soak DURATION=20m`;
/// scripts/test.sh skips it). A log producer and a blob producer run all along; the proxy
/// resets every connection every 10-60 s; the agent or the collector is killed with SIGKILL
/// every 1-3 minutes, in turn. At the end: nothing lost or repeated, no partial left, and the
/// daemons' memory and descriptors as flat as at the start.
@Suite(.serialized) struct SoakTests {
    /// SPOOLSHIP_SOAK_SECONDS (set by scripts/soak.sh); 120 s when run by hand without it.
    static var seconds: Double { Double(ProcessInfo.processInfo.environment["SPOOLSHIP_SOAK_SECONDS"] ?? "") ?? 120 }

    struct Sample {
        var t: Double
        var collectorRSS: Int, collectorFDs: Int
        var agentRSS: Int, agentFDs: Int
    }

    @Test func soak_resetsAndKills_nothingLost_memoryAndDescriptorsFlat() throws {
        let c = try Cluster("soak")
        defer { c.remove() }
        let seed = UInt64(Date().timeIntervalSince1970)
        var rng = Harness.SplitMix64(seed: seed)
        print("soak: \(Self.seconds) s, seed \(seed)")
        let port = try c.startCollector()
        let proxy = try c.startProxy()
        let blobs = try c.spool("blobs")
        let logs = try c.spool("logs")
        let config = try c.writeConfig("""
            [[spool]]
            name = "blobs"
            dir = "\(blobs.path)"

            [[logs]]
            name = "app"
            dir = "\(logs.path)"
            rotate-size = "4M"
            rotate-age = 2
            """)
        let args = c.agentArgs(spools: [], target: proxy.port) + ["--config", config.path]
        var agent = try c.startAgent(args)
        defer { agent.stop() }
        // About 200 KB/s of log records through the whole soak.
        let producer = try LogProducer(cluster: c, file: logs.appendingPathComponent("api.log"), seconds: Self.seconds, rate: 2000)
        defer { producer.daemon.stop() }
        var p = try c.payload()

        let start = Harness.monotonicNow()
        var nextReset = start + 10 + Double(rng.next() % 50)
        var nextKill = start + 60 + Double(rng.next() % 120)
        var nextBlob = start
        var nextSample = start + 15  // after the start-up allocations
        var resets = 0, agentKills = 0, collectorKills = 0, blobBytes = 0
        var samples: [Sample] = []
        var problems: [String] = []
        // A file gone from the spool must be committed whole: checked at every turn.
        func checkBlobs() {
            let left = Set(Harness.files(in: blobs)), dest = c.committed(spool: "blobs")
            for n in p.names where !left.contains(n) && !FileManager.default.fileExists(atPath: dest.appendingPathComponent(n).path) {
                problems.append("\(n) left the spool but is not committed")
            }
        }
        while Harness.monotonicNow() - start < Self.seconds {
            let now = Harness.monotonicNow()
            if now >= nextBlob {
                let size = Int(rng.next() % (4 << 20))
                try p.add(String(format: "b%06d", p.names.count), size: size, seed: rng.next(), into: blobs)
                blobBytes += size
                nextBlob = now + 0.5
            }
            if now >= nextReset {
                proxy.resetAll()
                resets += 1
                nextReset = now + 10 + Double(rng.next() % 51)
            }
            if now >= nextKill {
                if (agentKills + collectorKills) % 2 == 0 {
                    agent.kill(SIGKILL)
                    #expect(agent.wait(timeout: 30) == 137)
                    agentKills += 1
                    agent = try c.startAgent(args)
                } else {
                    c.collector?.kill(SIGKILL)
                    #expect(c.collector?.wait(timeout: 30) == 137)
                    collectorKills += 1
                    try c.startCollector(port: port)
                }
                nextKill = now + 60 + Double(rng.next() % 121)
                nextSample = max(nextSample, now + 10)  // a restarted daemon first settles
            }
            if now >= nextSample, let cp = c.collector?.pid {
                samples.append(Sample(t: now - start, collectorRSS: residentBytes(cp) ?? 0, collectorFDs: openDescriptors(cp),
                                      agentRSS: residentBytes(agent.pid) ?? 0, agentFDs: openDescriptors(agent.pid)))
                nextSample = now + 10
            }
            checkBlobs()
            #expect(agent.isRunning && c.collector?.isRunning == true, "a daemon died on its own:\n\(agent.output.suffix(2000))\n\(c.collector?.output.suffix(2000) ?? "")")
            if !agent.isRunning || c.collector?.isRunning != true { break }
            usleep(100_000)  // the loop's tick: faults and files are scheduled by the clock above
        }
        let records = try producer.finish(timeout: 60)
        // Drain: every blob and every record arrives.
        let dest = c.committed(spool: "blobs")
        var stream = LogStreamCheck.Result(records: 0, segments: [], bytes: 0)
        let drained = Harness.waitUntil(timeout: 180) {
            checkBlobs()
            guard Harness.files(in: blobs).isEmpty, Harness.files(in: dest).count == p.names.count else { return false }
            guard let r = try? LogStreamCheck.verify(in: c.committed(spool: "app"), stream: "api.log") else { return false }
            stream = r
            return r.records == records
        }
        #expect(drained, "drained: \(Harness.files(in: blobs).count) blobs left, \(Harness.files(in: dest).count) of \(p.names.count) committed, \(stream.records) of \(records) records\n\(agent.output.suffix(3000))")
        #expect(problems.isEmpty, "\(problems.prefix(10))")
        #expect(try p.identical(in: dest).count == p.names.count, "every blob identical")
        _ = try LogStreamCheck.verify(in: c.committed(spool: "app"), stream: "api.log")  // throws on a gap, repeat or tear
        #expect(Harness.files(in: c.committed(spool: "app")).filter { $0.contains("~") }.isEmpty, "no segment committed twice")
        #expect(c.partials().isEmpty, "no partial left")

        // Flat: the last third of the samples against the first third.
        let third = max(1, samples.count / 3)
        let early = samples.prefix(third), late = samples.suffix(third)
        func peak(_ s: ArraySlice<Sample>, _ f: (Sample) -> Int) -> Int { s.map(f).max() ?? 0 }
        let mib = 1 << 20
        print("soak: \(Int(Self.seconds)) s; \(resets) resets, \(agentKills) agent kills, \(collectorKills) collector kills; \(p.names.count) blobs (\(blobBytes / mib) MiB), \(records) log records in \(stream.segments.count) segments; all arrived, identical, once")
        print("soak: collector RSS early \(peak(early, \.collectorRSS) / mib) MiB, late \(peak(late, \.collectorRSS) / mib) MiB; fds early \(peak(early, \.collectorFDs)), late \(peak(late, \.collectorFDs))")
        print("soak: agent RSS early \(peak(early, \.agentRSS) / mib) MiB, late \(peak(late, \.agentRSS) / mib) MiB; fds early \(peak(early, \.agentFDs)), late \(peak(late, \.agentFDs))")
        for s in samples { print(String(format: "soak sample t=%.0f collector rss=%d KiB fds=%d agent rss=%d KiB fds=%d", s.t, s.collectorRSS / 1024, s.collectorFDs, s.agentRSS / 1024, s.agentFDs)) }
        #expect(samples.count >= 3, "enough samples to judge")
        #expect(peak(late, \.collectorRSS) <= peak(early, \.collectorRSS) * 3 / 2 + 16 * mib, "collector memory flat")
        #expect(peak(late, \.agentRSS) <= peak(early, \.agentRSS) * 3 / 2 + 16 * mib, "agent memory flat")
        #expect(peak(late, \.collectorFDs) <= peak(early, \.collectorFDs) + 16, "collector descriptors flat")
        #expect(peak(late, \.agentFDs) <= peak(early, \.agentFDs) + 16, "agent descriptors flat")
        if Self.seconds >= 300 { #expect(resets >= 3 && agentKills + collectorKills >= 2, "the faults happened") }
    }
}
