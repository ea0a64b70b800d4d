import Foundation
import Logging
@testable import SpoolshipAgent
import SpoolshipCore
import Testing

/// The segment queue in-process, on a real journal in a temporary state dir.
@Suite struct SegmentQueueTests {
    let dir: String
    let journal: AgentJournal
    let queue: SegmentQueue

    init() throws {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("spoolship-queue-\(UUID().uuidString)").path
        let logger = Logger(label: "test")
        journal = try AgentJournal(dir: dir, logger: logger)
        queue = SegmentQueue(journal: journal, segments: [:], logger: logger, stats: AgentStats())
    }

    /// What the journal holds, read as the next start reads it (the journal closed first).
    func reload() throws -> LoadedState {
        journal.close()
        let again = try AgentJournal(dir: dir, logger: Logger(label: "test"))
        defer { again.close() }
        return try again.load(logger: Logger(label: "test"))
    }

    func segment(_ id: UInt64, _ name: String, size: UInt64 = 10) -> Segment {
        Segment(id: id, spool: "s", name: name, kind: .blob, dev: 1, ino: id, size: size, crc: UInt32(id), mtimeNs: 0)
    }

    @Test func admit_queuesInSealOrder_oneSegmentAName_andJournalsTheSeals() throws {
        try queue.admit([segment(2, "b"), segment(1, "a"), segment(3, "a")])
        #expect(queue.nextOffers(max: 10).map(\.id) == [2, 3], "one segment a name (the later seal), in id order")
        try queue.admit([segment(4, "b")])
        #expect(queue.nextOffers(max: 10).isEmpty, "a name a live segment holds is not admitted again")
        #expect(Set(try reload().segments.keys) == [2, 3], "the seals are in the journal")
    }

    @Test func offers_respectTheWindow_andANewConnectionOffersAllUnacknowledged() throws {
        try queue.admit((1...5).map { segment(UInt64($0), "f\($0)") })
        #expect(queue.nextOffers(max: 2).map(\.id) == [1, 2])
        #expect(queue.nextOffers(max: 2).map(\.id) == [3, 4])
        let acked = queue.acknowledged([(1, "f1"), (3, "f3~1")])
        #expect(acked.map(\.id) == [1, 3] && acked.allSatisfy(\.acked) && acked[1].stored == "f3~1")
        #expect(queue.acknowledged([(1, "f1")]).isEmpty, "an acknowledgement counts once")
        queue.offerAllAgain()
        #expect(queue.nextOffers(max: 10).map(\.id) == [2, 4, 5], "acknowledged segments are never offered again")
        journal.close()
    }

    @Test func deferred_waitsBeforeItIsOfferedAgain_andOfferFirst_jumpsTheLine() throws {
        try queue.admit([segment(1, "a"), segment(2, "b")])
        _ = queue.nextOffers(max: 10)
        queue.offerLater(1)
        #expect(!queue.hasOffers, "a deferred segment waits (at least 0.75 s)")
        queue.offerFirst(2)
        #expect(queue.nextOffers(max: 10).map(\.id) == [2])
        journal.close()
    }

    @Test func finished_countsShipped_andReturnsNamesSkippedMeanwhile() throws {
        try queue.admit([segment(1, "a", size: 100), segment(2, "b", size: 50)])
        #expect(queue.holdsName("s/a"), "an event for a name a live segment holds is remembered")
        #expect(!queue.holdsName("s/c"))
        let acked = queue.acknowledged([(1, "a"), (2, "b")])
        let again = queue.finished(acked)
        #expect(again.map(\.name) == ["a"], "the skipped name is sealed again")
        #expect(queue.shipped.segments == 2 && queue.shipped.bytes == 150)
        #expect(queue.isEmpty)
        journal.close()
    }

    @Test func forget_recordsDone_andSaysWhetherToSealAgain() throws {
        try queue.admit([segment(1, "a"), segment(2, "b")])
        _ = queue.holdsName("s/a")
        _ = queue.holdsName("s/b")
        #expect(queue.forget(1, retry: { _ in true })?.sealAgain == true)
        #expect(queue.forget(2, retry: { _ in false })?.sealAgain == false, "a refused name is not tried again")
        #expect(queue.forget(2, retry: { _ in true }) == nil, "forgotten once")
        let loaded = try reload()
        #expect(loaded.segments.isEmpty && loaded.nextID == 3, "both seals, then both done, are in the journal")
    }
}
