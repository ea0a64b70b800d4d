import Foundation
import Glibc
import Logging
import SpoolshipCore
import SpoolshipIO
import SpoolshipDaemon

/// The agent's sealed segments, from their seal to their removal: waiting to be offered,
/// offered, deferred (no room at the collector), acknowledged. The only thing a session talks
/// to. The sealers put segments in (`admit`), the session takes offers and reports answers,
/// the reaper takes acknowledged segments out once their files are gone (`finished`).
///
/// `@unchecked Sendable`: every stored `var` is read and written only while holding `lock`;
/// the `let`s are Sendable or thread-safe (the journal locks its appends).
final class SegmentQueue: @unchecked Sendable {
    private let lock = NSLock()
    private let journal: AgentJournal
    private let logger: Logger
    private let stats: AgentStats
    // Under `lock`:
    private var segments: [UInt64: Segment]
    /// Segment ids waiting to be offered, in seal order.
    private var toOffer: [UInt64] = []
    /// (spool, name) of every live segment, so a second event for a file does not seal it twice.
    private var byName: [String: UInt64] = [:]
    /// Names whose event came while a live segment still held the name (a producer replaced
    /// the file): sealed again as soon as that segment is finished with.
    private var skippedEvents: Set<String> = []
    /// Segments the collector had no room for, with when to offer each again, and the wait
    /// that doubles at each refusal (1 s to 30 s).
    private var deferred: [UInt64: (until: Double, wait: Double)] = [:]
    /// When something last moved: a seal, an answer, a checkpoint, an acknowledgement.
    private var lastProgress = monotonicNow()
    private var shippedSegments = 0
    private var shippedBytes: UInt64 = 0
    /// The session's wake-up: called (outside the lock) when there is something new to offer.
    private var waker: (@Sendable () -> Void)?

    init(journal: AgentJournal, segments: [UInt64: Segment], logger: Logger, stats: AgentStats) {
        self.journal = journal
        self.segments = segments
        self.logger = logger
        self.stats = stats
    }

    private func locked<R>(_ body: () throws -> R) rethrows -> R {
        lock.lock()
        defer { lock.unlock() }
        return try body()
    }

    private func wake() { locked { waker }?() }

    /// Wakes the session for a change it reads elsewhere (a `--once` scan that ended).
    func nudge() { wake() }

    /// Sets (or clears) the session's wake-up.
    func onChange(_ w: (@Sendable () -> Void)?) { locked { waker = w } }

    // MARK: start-up

    /// Keeps the unacknowledged segments whose file is still as sealed (`intact`), forgets the
    /// rest, queues the kept ones for offering, and returns the acknowledged ones (their
    /// removal is the reaper's to finish).
    /// `intact` may fill in what is kept in memory only (a followed file's descriptor).
    func recover(intact: (inout Segment) -> Bool, configured: (Segment) -> Bool) -> [Segment] {
        locked {
            for (id, s) in segments where !s.acked {
                guard configured(s) else {
                    logger.warning("segment of a spool no longer configured; forgetting it", metadata: ["spool.name": "\(s.spool)", "segment.name": "\(s.name)"])
                    segments[id] = nil
                    continue
                }
                var kept = s
                if intact(&kept) {
                    segments[id] = kept
                    byName["\(s.spool)/\(s.name)"] = id
                } else {
                    segments[id] = nil
                }
            }
            toOffer = segments.keys.sorted()
            return segments.values.filter(\.acked).sorted { $0.id < $1.id }
        }
    }

    // MARK: sealers

    /// Whether a live segment holds `spool/name`; if so, the name is sealed again once that
    /// segment is finished with (the event that asked is not lost).
    func holdsName(_ key: String) -> Bool {
        locked {
            guard byName[key] != nil else { return false }
            skippedEvents.insert(key)
            return true
        }
    }

    /// Records sealed segments in the journal and queues them for offering (one segment a
    /// name: a name sealed twice in one batch would be offered twice under one key, and the
    /// collector keeps only the later offer). Throws, recording nothing, when the journal
    /// cannot be written.
    /// `sync`: the seals are synced before anything is offered (a followed file's ranges: a
    /// range cut again after a crash would not be cut where it was).
    func admit(_ sealed: [Segment], sync: Bool = false) throws {
        guard !sealed.isEmpty else { return }
        try locked {
            var latest: [String: Segment] = [:]
            for s in sealed where byName["\(s.spool)/\(s.name)"] == nil { latest["\(s.spool)/\(s.name)"] = s }
            let fresh = latest.values.sorted { $0.id < $1.id }
            try journal.append(fresh.map(\.sealRecord), sync: sync)
            for s in fresh {
                segments[s.id] = s
                byName["\(s.spool)/\(s.name)"] = s.id
                toOffer.append(s.id)
                logger.debug("sealed", metadata: ["spool.name": "\(s.spool)", "segment.name": "\(s.name)", "bytes": "\(s.size)", "crc": "\(hex32(s.crc))"])
            }
        }
        wake()
    }

    // MARK: the session

    /// A new connection: everything not yet acknowledged is offered again.
    func offerAllAgain() {
        locked { toOffer = segments.values.filter { !$0.acked }.map(\.id).sorted() }
    }

    /// Up to `max` segments to offer now, in seal order (deferred ones whose wait is over
    /// first go back in line).
    func nextOffers(max: Int) -> [Segment] {
        locked {
            releaseDeferred()
            var out: [Segment] = []
            while out.count < max, !toOffer.isEmpty {
                let id = toOffer.removeFirst()
                if let s = segments[id], !s.acked { out.append(s) }
            }
            return out
        }
    }

    var hasOffers: Bool { locked { releaseDeferred(); return !toOffer.isEmpty } }

    /// Moves the segments whose wait is over back to the offer queue. Under `lock`.
    private func releaseDeferred() {
        guard !deferred.isEmpty else { return }
        let now = monotonicNow()
        for (id, d) in deferred where d.until <= now && toOffer.firstIndex(of: id) == nil {
            if segments[id] != nil { toOffer.append(id) }
            deferred[id]?.until = .infinity
        }
    }

    func segment(_ id: UInt64) -> Segment? { locked { segments[id] } }

    /// The collector has no room for this segment now: offer it again after a wait that
    /// doubles at each refusal, up to 30 s. Not progress.
    func offerLater(_ id: UInt64) {
        locked {
            let wait = min(30, (deferred[id]?.wait ?? 0.5) * 2)
            deferred[id] = (monotonicNow() + wait * Double.random(in: 0.75...1.0), wait)
        }
    }

    /// Offers a segment again at once, before the others.
    func offerFirst(_ id: UInt64) {
        locked { toOffer.insert(id, at: 0) }
        wake()
    }

    /// Something moved (durable bytes, a commit, a seal): the `--once` clock starts over.
    func progressed() { locked { lastProgress = monotonicNow() } }
    var sinceProgress: Double { locked { monotonicNow() - lastProgress } }

    /// Segments the collector acknowledged as committed: marked at once (never offered
    /// again); returned for the reaper.
    func acknowledged(_ ids: [(UInt64, String)]) -> [Segment] {
        locked {
            var out: [Segment] = []
            for (id, stored) in ids {
                guard var s = segments[id], !s.acked else { continue }
                deferred[id] = nil
                s.acked = true
                s.stored = stored
                segments[id] = s
                out.append(s)
                stats.acknowledged(spool: s.spool, bytes: s.size)
            }
            lastProgress = monotonicNow()
            return out
        }
    }

    // MARK: the end of a segment

    /// The reaper removed these segments' files and recorded them done. Returns the names
    /// whose events were skipped meanwhile, to seal again.
    func finished(_ done: [Segment]) -> [(spool: String, name: String)] {
        // The session looks again: with `--once`, this may have been the last segment.
        defer { wake() }
        return locked {
            var again: [(String, String)] = []
            for s in done {
                segments[s.id] = nil
                let key = "\(s.spool)/\(s.name)"
                if byName[key] == s.id {
                    byName[key] = nil
                    if skippedEvents.remove(key) != nil { again.append((s.spool, s.name)) }
                }
                shippedSegments += 1
                shippedBytes += s.size
            }
            return again
        }
    }

    /// Forgets a segment that will not be shipped as sealed (its file vanished or changed, or
    /// the collector refused it), recording it done. Returns it, and whether an event for its
    /// name was skipped while it lived (`retry` says whether that name may be tried again).
    func forget(_ id: UInt64, retry: (String) -> Bool) -> (segment: Segment, sealAgain: Bool)? {
        let out: (Segment, Bool)? = locked {
            guard let s = segments.removeValue(forKey: id) else { return nil }
            deferred[id] = nil
            let key = "\(s.spool)/\(s.name)"
            var again = false
            if byName[key] == id {
                byName[key] = nil
                again = skippedEvents.remove(key) != nil && retry(key)
            }
            try? journal.append([StateRecord(op: .done, id: id)], sync: false)
            return (s, again)
        }
        wake()
        return out
    }

    /// Takes a segment out without recording anything (the caller journals what replaces it:
    /// a log segment sealed again becomes a rotation).
    func remove(_ id: UInt64) -> Segment? {
        locked {
            guard let s = segments.removeValue(forKey: id) else { return nil }
            deferred[id] = nil
            if byName["\(s.spool)/\(s.name)"] == id { byName["\(s.spool)/\(s.name)"] = nil }
            return s
        }
    }

    // MARK: figures

    var isEmpty: Bool { locked { segments.isEmpty } }
    var count: Int { locked { segments.count } }
    var all: [Segment] { locked { Array(segments.values) } }
    var shipped: (segments: Int, bytes: UInt64) { locked { (shippedSegments, shippedBytes) } }
}
