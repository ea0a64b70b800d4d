import Testing
@testable import SpoolshipCore

/// The collector's admission rules (`OfferAdmission`), in process: each answer, each question
/// in its order, and the edges of every limit.
@Suite struct OfferAdmissionTests {
    static let limits = OfferAdmission.Limits(largestSegment: 1000, window: 4, maxPartialBytes: 1000, freeSpaceReserve: 100)
    static let key = SegmentKey(spool: "app", name: "a.log.0000000001", size: 400, crc: 7)
    static let offer = Offer(tag: 9, kind: .log, key: key)

    /// Runs `decide` to its answer, answering its questions with `learn`; returns the answer
    /// and the questions asked, in order.
    static func run(_ offer: Offer = offer, facts: OfferAdmission.Facts = .init(), limits: OfferAdmission.Limits = limits,
                    learn: (OfferAdmission.Step, inout OfferAdmission.Facts) -> Void) -> (OfferAdmission.Step, [OfferAdmission.Step]) {
        var facts = facts
        var asked: [OfferAdmission.Step] = []
        while true {
            let step = OfferAdmission.decide(offer, agentID: "web-1", facts: facts, limits: limits)
            switch step {
            case .lookUpCommitted, .lookAtPartial, .dropLeftovers, .measureFreeSpace:
                asked.append(step)
                learn(step, &facts)
                precondition(asked.count < 10, "decide keeps asking: \(asked)")
            default:
                return (step, asked)
            }
        }
    }

    /// A fresh data dir with room: nothing committed, no partial, nothing dropped, 1 MB free.
    static func fresh(_ step: OfferAdmission.Step, _ f: inout OfferAdmission.Facts) {
        switch step {
        case .lookUpCommitted: f.committed = false
        case .lookAtPartial: f.heldBytes = 0
        case .dropLeftovers: f.droppedBytes = 0
        case .measureFreeSpace: f.freeBytes = .bytes(1_000_000)
        default: break
        }
    }

    // MARK: screen

    @Test func screen_takesAWellFormedOfferWithinTheLimits() {
        #expect(OfferAdmission.screen(Self.offer, limits: Self.limits, openOffers: 3, tagOpen: false) == nil)
    }

    @Test func screen_refusesBadNames_withTheNameError() {
        let bad = Offer(tag: 1, kind: .blob, key: SegmentKey(spool: "app", name: "../x", size: 1, crc: 0))
        #expect(OfferAdmission.screen(bad, limits: Self.limits, openOffers: 0, tagOpen: false)
                == .init(.badName, "segment name contains '/'"))
        let badSpool = Offer(tag: 1, kind: .blob, key: SegmentKey(spool: ".hidden", name: "x", size: 1, crc: 0))
        #expect(OfferAdmission.screen(badSpool, limits: Self.limits, openOffers: 0, tagOpen: false)?.code == .badName)
    }

    @Test func screen_sizeLimit_isInclusive() {
        let at = Offer(tag: 1, kind: .blob, key: SegmentKey(spool: "s", name: "x", size: 1000, crc: 0))
        #expect(OfferAdmission.screen(at, limits: Self.limits, openOffers: 0, tagOpen: false) == nil)
        let over = Offer(tag: 1, kind: .blob, key: SegmentKey(spool: "s", name: "x", size: 1001, crc: 0))
        #expect(OfferAdmission.screen(over, limits: Self.limits, openOffers: 0, tagOpen: false)
                == .init(.tooLarge, "segment s/x claims 1001 bytes, more than the maximum of 1000"))
        let huge = Offer(tag: 1, kind: .blob, key: SegmentKey(spool: "s", name: "x", size: 1 << 63, crc: 0))
        #expect(OfferAdmission.screen(huge, limits: Self.limits, openOffers: 0, tagOpen: false)?.code == .tooLarge)
    }

    @Test func screen_refusesATagOfferedTwice_andAFullWindow() {
        #expect(OfferAdmission.screen(Self.offer, limits: Self.limits, openOffers: 1, tagOpen: true)
                == .init(.protocolViolation, "tag 9 offered twice"))
        #expect(OfferAdmission.screen(Self.offer, limits: Self.limits, openOffers: 4, tagOpen: false)
                == .init(.protocolViolation, "more than 4 offers outstanding; the window is 4"))
    }

    // MARK: decide

    @Test func freshSegment_asksInOrder_thenSendsFromZero() {
        let (answer, asked) = Self.run(learn: Self.fresh)
        #expect(answer == .sendFrom(0))
        #expect(asked == [.lookUpCommitted, .lookAtPartial, .measureFreeSpace])
    }

    @Test func brokenStore_refusesBeforeLookingAnythingUp() {
        let (answer, asked) = Self.run(facts: .init(storeBroken: "the ledger failed"), learn: Self.fresh)
        #expect(answer == .refuse(.init(.internalError, "the ledger failed")))
        #expect(asked.isEmpty)
    }

    @Test func committedSegment_answersCommitted_withoutTouchingItsPartial() {
        let (answer, asked) = Self.run { step, f in
            Self.fresh(step, &f)
            if step == .lookUpCommitted { f.committed = true }
        }
        #expect(answer == .committed)
        #expect(asked == [.lookUpCommitted])
    }

    @Test func durablePartial_resumesFromItsBytes() {
        let (answer, _) = Self.run { step, f in
            Self.fresh(step, &f)
            if step == .lookAtPartial { f.heldBytes = 123 }
        }
        #expect(answer == .sendFrom(123))
        // A whole segment already held: sent from its end (the DATA of 0 bytes commits it).
        let (whole, _) = Self.run { step, f in
            Self.fresh(step, &f)
            if step == .lookAtPartial { f.heldBytes = 400 }
        }
        #expect(whole == .sendFrom(400))
    }

    @Test func partialLimit_dropsLeftoversWhenThatMakesRoom() {
        // 700 left over + 400 offered = 1100 > 1000: drop 100.
        let (answer, asked) = Self.run(facts: .init(leftoverBytes: 700)) { step, f in
            Self.fresh(step, &f)
            if case .dropLeftovers(let n) = step { #expect(n == 100); f.droppedBytes = 250 }
        }
        #expect(answer == .sendFrom(0))
        #expect(asked == [.lookUpCommitted, .lookAtPartial, .dropLeftovers(freeing: 100), .measureFreeSpace])
    }

    @Test func partialLimit_defers_whenDroppingFreedTooLittle() {
        let (answer, _) = Self.run(facts: .init(leftoverBytes: 700)) { step, f in
            Self.fresh(step, &f)
            if case .dropLeftovers = step { f.droppedBytes = 50 }
        }
        guard case .deferred(let d) = answer else { Issue.record("\(answer)"); return }
        #expect(d.code == .partialLimit)
        #expect(d.reason == .partialLimit(unfinished: 1050, limit: 1000))
        #expect(d.message == "agent web-1 has 0 bytes of segments on offer; with 400 more it would pass the collector's limit of 1000 bytes of unfinished data per agent; retry later")
    }

    @Test func partialLimit_keepsLeftovers_whenTheOffersAloneFillIt() {
        // 700 on offer + 400 = 1100: dropping left-overs could not help; nothing is dropped.
        let (answer, asked) = Self.run(facts: .init(onOffer: 700, leftoverBytes: 50), learn: Self.fresh)
        #expect(!asked.contains { if case .dropLeftovers = $0 { return true }; return false })
        #expect(answer == .deferred(.init(reason: .partialLimit(unfinished: 1150, limit: 1000), code: .partialLimit,
                                          message: "agent web-1 has 700 bytes of segments on offer; with 400 more it would pass the collector's limit of 1000 bytes of unfinished data per agent; retry later")))
    }

    @Test func partialLimit_exactlyAtTheLimit_fits_andZeroMeansNone() {
        let (at, _) = Self.run(facts: .init(onOffer: 300, leftoverBytes: 300), learn: Self.fresh)
        #expect(at == .sendFrom(0))
        var none = Self.limits
        none.maxPartialBytes = 0
        let (unlimited, asked) = Self.run(facts: .init(onOffer: 1 << 40, leftoverBytes: 1 << 40), limits: none, learn: Self.fresh)
        #expect(unlimited == .sendFrom(0))
        #expect(asked == [.lookUpCommitted, .lookAtPartial, .measureFreeSpace])
    }

    @Test func reserve_defersWhatWouldEatIntoIt_countingWhatOffersStillBring() {
        // Needs 400 - 100 held + 150 coming = 450, beside a reserve of 100: 550 free is enough,
        // 549 is not.
        func answer(free: UInt64) -> OfferAdmission.Step {
            Self.run(facts: .init(coming: 150)) { step, f in
                Self.fresh(step, &f)
                if step == .lookAtPartial { f.heldBytes = 100 }
                if step == .measureFreeSpace { f.freeBytes = .bytes(free) }
            }.0
        }
        #expect(answer(free: 550) == .sendFrom(100))
        #expect(answer(free: 549) == .deferred(.init(reason: .noSpace(free: 549, needed: 450, reserve: 100), code: .noSpaceRetry,
                                                     message: "no space on the collector: 549 bytes free, 450 needed, 100 kept in reserve; retry later")))
    }

    @Test func reserve_unknownFreeSpace_orNoReserve_isNotChecked() {
        let (unknown, _) = Self.run { step, f in
            Self.fresh(step, &f)
            if step == .measureFreeSpace { f.freeBytes = .unknown }
        }
        #expect(unknown == .sendFrom(0))
        var noReserve = Self.limits
        noReserve.freeSpaceReserve = 0
        let (answer, asked) = Self.run(limits: noReserve, learn: Self.fresh)
        #expect(answer == .sendFrom(0))
        #expect(!asked.contains(.measureFreeSpace))
    }

    // MARK: DATA

    @Test func data_mustStartWhereTheOfferReached_andEndWithinIt() {
        let k = Self.key
        #expect(OfferAdmission.checkData(tag: 9, offset: 0, length: 400, open: (k, 0)) == nil)
        #expect(OfferAdmission.checkData(tag: 9, offset: 100, length: 300, open: (k, 100)) == nil)
        #expect(OfferAdmission.checkData(tag: 9, offset: 400, length: 0, open: (k, 400)) == nil)
        #expect(OfferAdmission.checkData(tag: 9, offset: 0, length: 10, open: (k, 100))
                == .init(.protocolViolation, "DATA for a.log.0000000001 starts at offset 0, expected 100"))
        #expect(OfferAdmission.checkData(tag: 9, offset: 100, length: 301, open: (k, 100))
                == .init(.protocolViolation, "DATA for a.log.0000000001 runs past its size 400"))
        #expect(OfferAdmission.checkData(tag: 3, offset: 0, length: 1, open: nil)
                == .init(.protocolViolation, "DATA for tag 3, which is not an open offer"))
    }

    @Test func data_hostileLengths_doNotOverflow() {
        let k = Self.key
        #expect(OfferAdmission.checkData(tag: 9, offset: 100, length: .max, open: (k, 100))?.code == .protocolViolation)
        #expect(OfferAdmission.checkData(tag: 9, offset: .max, length: .max, open: (k, .max))?.code == .protocolViolation)
    }
}
