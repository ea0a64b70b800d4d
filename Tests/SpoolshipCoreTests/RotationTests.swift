@testable import SpoolshipCore
import Testing

/// The rotator's two state machines: a stream's active file (`LogStream`) and one rotation's
/// phases (`Rotation.Phase`).
@Suite struct RotationTests {
    @Test func stream_isDueBySize_byAge_orAll_onlyWithBytes() {
        var s = LogStream()
        #expect(s.observe(dev: 1, ino: 10, size: 0, now: 0, rotateSize: 100, rotateAge: 60, all: true) == (false, .adopted),
                "an empty file is never due, even with all")
        #expect(s.observe(dev: 1, ino: 10, size: 50, now: 1, rotateSize: 100, rotateAge: 60, all: false) == (false, nil))
        #expect(s.firstDataAt == 1, "the age counts from the first byte seen")
        #expect(s.observe(dev: 1, ino: 10, size: 60, now: 2, rotateSize: 100, rotateAge: 60, all: true) == (true, nil))
        #expect(s.observe(dev: 1, ino: 10, size: 100, now: 3, rotateSize: 100, rotateAge: 60, all: false) == (true, nil), "size reached")
        var t = LogStream()
        _ = t.observe(dev: 1, ino: 11, size: 5, now: 10, rotateSize: 100, rotateAge: 60, all: false)
        #expect(!t.ageUp(now: 69.9, rotateAge: 60))
        #expect(t.ageUp(now: 70, rotateAge: 60))
        #expect(t.observe(dev: 1, ino: 11, size: 5, now: 70, rotateSize: 100, rotateAge: 60, all: false) == (true, nil), "age reached")
    }

    @Test func stream_afterAFailedRotation_waitsOutItsBackOff() {
        var s = LogStream()
        _ = s.observe(dev: 1, ino: 10, size: 500, now: 0, rotateSize: 100, rotateAge: 60, all: false)
        s.retryAfter = 5
        #expect(s.observe(dev: 1, ino: 10, size: 600, now: 4.9, rotateSize: 100, rotateAge: 60, all: true).due == false)
        #expect(s.observe(dev: 1, ino: 10, size: 600, now: 5, rotateSize: 100, rotateAge: 60, all: false).due == true)
    }

    @Test func stream_namesWhatSomeoneElseDid() {
        // A rotation of ours: a new inode is expected, nothing is lost.
        var s = LogStream(expectNew: true)
        #expect(s.observe(dev: 1, ino: 20, size: 7, now: 0, rotateSize: 100, rotateAge: 60, all: false).surprise == .adopted)
        // Replaced behind the agent's back: the old file's unrotated bytes are lost.
        #expect(s.observe(dev: 1, ino: 21, size: 3, now: 1, rotateSize: 100, rotateAge: 60, all: false).surprise == .replaced(lost: 7))
        #expect(s.size == 3 && s.firstDataAt == 1, "the new file is watched from its first byte")
        // Truncated (copytruncate): the age starts over from the bytes left.
        _ = s.observe(dev: 1, ino: 21, size: 90, now: 2, rotateSize: 100, rotateAge: 60, all: false)
        #expect(s.observe(dev: 1, ino: 21, size: 4, now: 3, rotateSize: 100, rotateAge: 60, all: false).surprise == .truncated(before: 90, now: 4))
        #expect(s.firstDataAt == 3)
        #expect(s.lostIfVanished == 4)
        #expect(LogStream(expectNew: true).lostIfVanished == 0, "right after a rotation nothing is pending")
    }

    @Test func rotation_phases_fromJournalToSeal() {
        var r = Rotation(id: 7, spool: "app", stream: "api.log", seq: 3, dev: 1, ino: 2)
        #expect(r.phase == .journaled && !r.isRenamed && !r.isSynced)
        r.renamed(size: 4096, synced: false)
        #expect(r.phase == .renamed && r.isRenamed && !r.isSynced && r.sizeAtRotation == 4096)
        r.directoriesSynced()
        #expect(r.phase == .synced && r.isSynced)
        // A writer holds it: said after 30 s, then every 60 s, never in between.
        #expect(r.heldByWriter(at: 100, warnAfter: 30, every: 60) == nil)
        #expect(r.heldByWriter(at: 129, warnAfter: 30, every: 60) == nil)
        #expect(r.heldByWriter(at: 130, warnAfter: 30, every: 60) == 30)
        #expect(r.heldByWriter(at: 150, warnAfter: 30, every: 60) == nil)
        #expect(r.heldByWriter(at: 190, warnAfter: 30, every: 60) == 90)
        #expect(r.isSynced, "waiting for a writer comes after the sync")
        #expect(r.writersGone(at: 200) == 100)
        #expect(r.phase == .synced)
        #expect(r.writersGone(at: 201) == nil, "no wait to report twice")
        #expect(r.rawName == "api.log.0000000003" && r.gzName == "api.log.0000000003.gz" && r.streamKey == "app/api.log")
        #expect(r.record.op == .rotate && r.record.seq == 3 && r.record.name == "api.log")
    }
}
