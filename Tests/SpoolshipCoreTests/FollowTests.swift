@testable import SpoolshipCore
import Testing

/// The follower's state machine (`FollowStream`): a model test against a producer that never
/// reopens (or reopens at a moment of its own) while the file is renamed away and replaced,
/// with the follower's looks interleaved with the producer's writes; and the surprises.
@Suite struct FollowTests {
    /// A deterministic generator, so that a failing seed can be run again.
    struct Rng: RandomNumberGenerator {
        var state: UInt64
        mutating func next() -> UInt64 {
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
    }

    /// The world: files by identity (their bytes), the name's file, the producer's file.
    struct World {
        var files: [FileIdentity: [UInt8]] = [:]
        var underName: FileIdentity?
        var producing: FileIdentity
        var written: [UInt8] = []
        var nextIno: UInt64 = 10
        var record = 0
        /// A record written in two writes: its second half is still to come.
        var half: [UInt8] = []
        /// The file under the name when the follower last looked: the next rotation waits for
        /// that look (the agent opens each new file at its IN_CREATE; two rotations inside
        /// one look, 10 ms, are not modelled).
        var seen: FileIdentity?

        init() {
            let f = FileIdentity(dev: 1, ino: 1, birth: 100)
            files[f] = []
            underName = f
            producing = f
        }

        mutating func write(_ rng: inout Rng) {
            if !half.isEmpty {
                files[producing]! += half
                written += half
                half = []
                return
            }
            record += 1
            let line = Array("record \(record) \(String(repeating: "x", count: Int(rng.next() % 40)))\n".utf8)
            let split = rng.next() % 4 == 0 ? Int(rng.next() % UInt64(line.count)) : line.count
            files[producing]! += line[..<split]
            written += line[..<split]
            half = Array(line[split...])
        }

        /// logrotate's create: the file is renamed away and a new one made under the name.
        mutating func rotate() {
            guard seen == underName else { return }
            nextIno += 1
            let f = FileIdentity(dev: 1, ino: nextIno, birth: Int64(nextIno) * 1000)
            files[f] = []
            underName = f
        }
    }

    /// One look by the follower, with the producer writing between its steps.
    static func look(_ s: inout FollowStream, _ w: inout World, _ rng: inout Rng, now: Double, all: Bool,
                     out: inout [UInt8], producerActs: (inout World, inout Rng) -> Void) {
        if let n = w.underName, s.current?.identity != n { s.adopt(FollowedFile(identity: n, current: true)) }
        w.seen = w.underName
        producerActs(&w, &rng)
        // Newest file first; for a file no longer under the name, whether anyone writes it is
        // asked before its size (once no one does, the size read after is its last).
        for f in s.files.reversed() {
            if !f.current { s.setWriters(f.identity, w.producing == f.identity) }
            _ = s.observe(f.identity, size: UInt64(w.files[f.identity]!.count), now: now)
            producerActs(&w, &rng)
        }
        let files = w.files
        let cuts = s.plan(now: now, rotateSize: 64, rotateAge: 5, all: all) { id, from, to in
            let b = files[id]!
            return (Int(from)..<Int(to)).last(where: { b[$0] == UInt8(ascii: "\n") }).map { UInt64($0) }
        }
        for c in cuts { out += w.files[c.file]![Int(c.from)..<Int(c.to)] }
        s.applied(cuts, tails: [:], now: now)
        _ = s.dropFinished()
    }

    @Test(arguments: 0..<50)
    func model_everyByteOnceInOrder_throughRenamesAndLateReopens(seed: Int) {
        var rng = Rng(state: UInt64(seed) &* 7919 &+ 1)
        var w = World()
        var s = FollowStream()
        var out: [UInt8] = []
        var now = 0.0
        // Between two steps of a look, the producer does up to three things.
        let act: (inout World, inout Rng) -> Void = { w, rng in
            for _ in 0..<(rng.next() % 4) {
                switch rng.next() % 10 {
                case 0...5: w.write(&rng)
                case 6: if rng.next() % 3 == 0 { w.rotate() }
                case 7: if w.half.isEmpty, let n = w.underName { w.producing = n }  // the producer reopens (late)
                default: break
                }
            }
        }
        for _ in 0..<400 {
            now += Double(rng.next() % 100) / 100
            Self.look(&s, &w, &rng, now: now, all: false, out: &out, producerActs: act)
        }
        // The producer finishes its record and stops; the follower catches up.
        if !w.half.isEmpty { w.write(&rng) }
        w.producing = FileIdentity(dev: 0, ino: 0, birth: 0)
        for _ in 0..<5 {
            now += 10
            Self.look(&s, &w, &rng, now: now, all: false, out: &out, producerActs: { _, _ in })
        }
        let differ = Array(zip(out, w.written)).firstIndex { $0 != $1 } ?? min(out.count, w.written.count)
        let same = out == w.written
        #expect(same, "seed \(seed): \(out.count) bytes out, \(w.written.count) written, first difference at \(differ)")
        #expect(s.files.count == 1, "every file but the one under the name is finished and forgotten")
    }

    @Test func ranges_endAtANewline_aPartialLineWaitsForItsAge() {
        let id = FileIdentity(dev: 1, ino: 2, birth: 3)
        var s = FollowStream()
        s.adopt(FollowedFile(identity: id, current: true))
        let bytes = Array("one\ntwo\nthr".utf8)
        let nl: (FileIdentity, UInt64, UInt64) -> UInt64? = { _, from, to in
            (Int(from)..<Int(to)).last(where: { bytes[$0] == UInt8(ascii: "\n") }).map { UInt64($0) }
        }
        _ = s.observe(id, size: UInt64(bytes.count), now: 0)
        #expect(s.plan(now: 1, rotateSize: 1000, rotateAge: 5, all: false, lastNewline: nl).isEmpty, "neither size nor age is up")
        let cuts = s.plan(now: 5, rotateSize: 1000, rotateAge: 5, all: false, lastNewline: nl)
        #expect(cuts == [FollowCut(file: id, from: 0, to: 8)], "cut at the last newline")
        s.applied(cuts, tails: [:], now: 5)
        #expect(s.plan(now: 9, rotateSize: 1000, rotateAge: 5, all: false, lastNewline: nl).isEmpty, "the partial line waits")
        #expect(s.plan(now: 10, rotateSize: 1000, rotateAge: 5, all: false, lastNewline: nl) == [FollowCut(file: id, from: 8, to: 11)],
                "and goes once it is as old as the age setting")
        #expect(s.plan(now: 6, rotateSize: 1000, rotateAge: 5, all: true, lastNewline: nl) == [FollowCut(file: id, from: 8, to: 11)], "--once takes all")
        // Ranges are at most rotate-size long, each at a newline where one falls in it.
        var t = FollowStream()
        t.adopt(FollowedFile(identity: id, current: true))
        _ = t.observe(id, size: UInt64(bytes.count), now: 0)
        #expect(t.plan(now: 0, rotateSize: 5, rotateAge: 60, all: false, lastNewline: nl) == [
            FollowCut(file: id, from: 0, to: 4), FollowCut(file: id, from: 4, to: 8),
        ])
    }

    @Test func truncationAndRewrite_startTheFileOver_andSayWhatWasNotShipped() {
        let id = FileIdentity(dev: 1, ino: 2, birth: 3)
        var s = FollowStream()
        s.adopt(FollowedFile(identity: id, current: true))
        _ = s.observe(id, size: 100, now: 0)
        s.applied([FollowCut(file: id, from: 0, to: 80)], tails: [:], now: 0)
        #expect(s.observe(id, size: 120, now: 1) == nil)
        #expect(s.observe(id, size: 10, now: 2) == .truncated(file: id, cutEnd: 80, unshipped: 40, sizeNow: 10, tail: nil))
        #expect(s.files[0].cutEnd == 0 && s.files[0].size == 10, "followed again from its start")
        s.applied([FollowCut(file: id, from: 0, to: 10)], tails: [:], now: 3)
        _ = s.observe(id, size: 30, now: 4)
        #expect(s.rewritten(id, now: 4) == .rewritten(file: id, cutEnd: 10, unshipped: 20))
        #expect(s.files[0].cutEnd == 0 && s.pending == 30)
    }

    @Test func anOldFile_isFinishedOnlyWhenCutToItsEnd_andWrittenByNoOne() {
        let a = FileIdentity(dev: 1, ino: 2, birth: 3), b = FileIdentity(dev: 1, ino: 4, birth: 5)
        var s = FollowStream()
        s.adopt(FollowedFile(identity: a, current: true))
        _ = s.observe(a, size: 10, now: 0)
        s.adopt(FollowedFile(identity: b, current: true))
        #expect(s.current?.identity == b && !s.files[0].current)
        s.setWriters(a, false)
        let cuts = s.plan(now: 0, rotateSize: 1000, rotateAge: 60, all: false) { _, _, _ in nil }
        #expect(cuts == [FollowCut(file: a, from: 0, to: 10)], "an old file no one writes is cut whole at once, partial line and all")
        s.applied(cuts, tails: [:], now: 0)
        #expect(s.dropFinished().map(\.identity) == [a])
        #expect(s.files.map(\.identity) == [b])
    }
}
