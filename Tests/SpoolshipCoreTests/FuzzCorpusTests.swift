import Foundation
import SpoolshipCore
import SpoolshipFuzzing
import Testing

/// Row 17 of RELIABILITY.md, in the suite: every input `make fuzz` kept (Tests/FuzzCorpus)
/// runs again through the same target. A crash there is a crash of this test.
@Suite struct FuzzCorpusTests {
    static let corpus = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("FuzzCorpus")

    @Test func regressionCorpus_replaysWithoutACrash_andReachesEveryStage() throws {
        let names = try FileManager.default.contentsOfDirectory(atPath: Self.corpus.path).sorted()
        var reach: FuzzTarget.Reach = []
        for name in names {
            let bytes = try #require(FileManager.default.contents(atPath: Self.corpus.appendingPathComponent(name).path), "\(name)")
            reach.formUnion(FuzzTarget.run(Array(bytes)))
        }
        print("fuzz corpus: \(names.count) inputs replayed")
        #expect(names.count >= FuzzTarget.seeds().count)
        // A corpus that no longer gets past the preamble would test nothing.
        let stages: [(FuzzTarget.Reach, String)] = [
            (.frame, "a frame decoded"), (.challenged, "a CHALLENGE sent"), (.accepted, "an agent accepted"),
            (.authenticated, "an agent authenticated"), (.offered, "an OFFER taken"), (.payload, "a DATA payload"),
            (.refused, "a refusal"), (.agentSide, "the agent's decoder"),
        ]
        for (stage, what) in stages { #expect(reach.contains(stage), "no corpus input reaches \(what)") }
    }

    /// The seeds are the conversations the daemons really have; each reaches its stage.
    @Test func seeds_reachTheirStages() {
        let seeds = FuzzTarget.seeds()
        #expect(FuzzTarget.run(seeds["seed-open-session"]!).isSuperset(of: [.accepted, .offered, .payload]))
        #expect(FuzzTarget.run(seeds["seed-auth-session"]!).isSuperset(of: [.challenged, .authenticated, .offered, .payload]))
        let wrong = FuzzTarget.run(seeds["seed-auth-wrong-proof"]!)
        #expect(wrong.contains(.refused) && !wrong.contains(.accepted))
        #expect(FuzzTarget.run(seeds["seed-agent-reads-collector"]!).contains(.agentSide))
    }

    /// Cheap mutations of every seed, in the suite without libFuzzer: each prefix, each byte
    /// inverted. Nothing crashes, and an authenticated session never survives a changed proof.
    @Test func everyTruncationAndByteFlipOfTheSeeds_isHandled() {
        var runs = 0
        for (name, seed) in FuzzTarget.seeds() {
            for n in 0...seed.count {
                FuzzTarget.run(Array(seed.prefix(n)))
                runs += 1
            }
            for i in 1..<seed.count {
                var m = seed
                m[i] ^= 0xff
                let r = FuzzTarget.run(m)
                runs += 1
                if name == "seed-auth-wrong-proof" { #expect(!r.contains(.accepted), "flip at \(i) let a wrong proof in") }
            }
        }
        print("fuzz seeds: \(runs) truncations and flips")
    }
}
