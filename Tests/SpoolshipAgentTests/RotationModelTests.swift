import Foundation
import Glibc
import Logging
@testable import SpoolshipAgent
import SpoolshipCore
import SpoolshipDaemon
import SpoolshipIO
import Testing

/// A model test of log rotation, in the style of Vector's file-source experiment test: random
/// steps (a producer appends; the rotator rotates; the log sealer seals; the agent restarts,
/// cleanly or after a crash between journaling a rotation and its rename, or between the
/// rename and anything else) run on a real spool directory through the agent's own rotator,
/// sealer and recovery, beside a model that only remembers the bytes written to each stream.
/// At the end every stream's sealed segments, in sequence order, must be exactly the bytes
/// written: nothing lost, nothing twice, nothing out of order.
@Suite struct RotationModelTests {
    enum Step: CaseIterable {
        case append, rotateAll, seal, restart, crashAfterJournal, crashAfterRename
    }

    /// A tiny deterministic generator, so that a failing seed can be replayed.
    struct SplitMix: RandomNumberGenerator {
        var state: UInt64
        mutating func next() -> UInt64 {
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
    }

    /// A new agent on the state dir, as after a restart. The old one let go of the lock, but a
    /// child process that another test in this process forks holds a copy of the lock's
    /// descriptor until its exec (close-on-exec acts only then): wait that out, up to 10 s.
    static func restart(_ config: AgentConfig, _ logger: Logger) throws -> Agent {
        let deadline = Date(timeIntervalSinceNow: 10)
        while true {
            do {
                return try Agent(config: config, logger: logger)
            } catch let e as DaemonError where e.description.contains("another agent is running") && Date() < deadline {
                usleep(10_000)
            }
        }
    }

    @Test(arguments: [1, 2, 3, 4, 5, 6] as [UInt64])
    func randomSteps_segmentsInSequenceOrder_areExactlyTheBytesWritten(seed: UInt64) throws {
        var rng = SplitMix(state: seed)
        let root = FileManager.default.temporaryDirectory.appendingPathComponent("spoolship-model-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: root) }
        let spoolDir = "\(root)/spool"
        try FileManager.default.createDirectory(atPath: spoolDir, withIntermediateDirectories: true)
        var logs = LogSettings()
        logs.glob = "*.log"
        let config = AgentConfig(collector: Endpoint(host: "127.0.0.1", port: 9), agentID: "model",
                                 stateDir: "\(root)/state", spools: [SpoolConfig(name: "app", directory: spoolDir, logs: logs)])
        let logger = Logger(label: "model")
        let streams = ["a.log", "b.log", "c.log"]
        var written: [String: [UInt8]] = [:]
        var agent = try Agent(config: config, logger: logger)
        var trace: [String] = []

        for n in 0..<80 {
            let step = Step.allCases.randomElement(using: &rng)!
            let stream = streams.randomElement(using: &rng)!
            trace.append("\(n):\(step)/\(stream)")
            switch step {
            case .append:
                // A producer that reopens by path: each record opens, appends, closes.
                let count = Int.random(in: 1...4096, using: &rng)
                let bytes = (0..<count).map { _ in UInt8.random(in: 0...255, using: &rng) }
                let fd = open("\(spoolDir)/\(stream)", O_WRONLY | O_APPEND | O_CREAT, 0o644)
                #expect(fd >= 0)
                _ = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
                close(fd)
                written[stream, default: []] += bytes
            case .rotateAll:
                agent.rotator.rotatePass(all: true)
            case .seal:
                agent.logSealer.sealPending()
            case .restart:
                agent.close()
                agent = try Self.restart(config, logger)
            case .crashAfterJournal, .crashAfterRename:
                // The rotator's first steps for one stream, then the process dies.
                var st = stat()
                guard lstat("\(spoolDir)/\(stream)", &st) == 0, st.st_size > 0 else { continue }
                let r = agent.rotations.plan(spool: "app", streams: [(stream, UInt64(st.st_dev), UInt64(st.st_ino))],
                                             ids: SegmentIDs(next: UInt64.random(in: 1_000_000...2_000_000, using: &rng)))[0]
                try agent.journal.append([r.record], sync: true)
                if step == .crashAfterRename {
                    #expect(rename("\(spoolDir)/\(stream)", "\(spoolDir)/\(LogNames.rotatedDirName)/\(r.rawName)") == 0)
                }
                agent.close()
                agent = try Self.restart(config, logger)
            }
        }
        // Drain: rotate whatever is left, and seal every rotation.
        agent.rotator.rotatePass(all: true)
        agent.logSealer.sealPending()
        #expect(agent.rotations.isEmpty, "every rotation sealed (seed \(seed): \(trace.joined(separator: " ")))")

        // What the sealed segments hold, stream by stream, in sequence order.
        let rotatedDir = "\(spoolDir)/\(LogNames.rotatedDirName)"
        let segments = agent.queue.all
        var got: [String: [UInt8]] = [:]
        for s in segments.sorted(by: { $0.name < $1.name }) {
            let p = try #require(LogNames.parse(segmentName: s.name))
            let bytes = try #require(FileManager.default.contents(atPath: "\(rotatedDir)/\(s.name)"))
            #expect(UInt64(bytes.count) == s.size, "\(s.name): the size sealed")
            var crc = CRC32()
            crc.update(Array(bytes))
            #expect(crc.value == s.crc, "\(s.name): the checksum sealed")
            got[p.stream, default: []] += Array(bytes)
        }
        #expect(segments.count >= 3 && written.values.reduce(0) { $0 + $1.count } > 0, "the steps did something")
        let onDisk = try FileManager.default.contentsOfDirectory(atPath: rotatedDir).filter { !$0.hasPrefix(".") }
        #expect(Set(onDisk) == Set(segments.map(\.name)), "no rotated file outside a segment")
        for s in streams {
            #expect(got[s, default: []] == written[s, default: []],
                    "\(s): \(got[s]?.count ?? 0) bytes in segments, \(written[s]?.count ?? 0) written (seed \(seed): \(trace.joined(separator: " ")))")
        }
        // And a restart finds the same segments in the journal.
        agent.close()
        agent = try Self.restart(config, logger)
        #expect(Set(agent.queue.all.map(\.name)) == Set(segments.map(\.name)))
        agent.close()
    }
}
