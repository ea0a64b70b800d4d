import CoreMetrics
import Foundation
import Glibc

// The figures of a running daemon, one method per observable event (as vector's
// internal_events.rs lists them). `spoolship status` reads snapshots of them beside the
// daemon's live state; the Prometheus metrics count the same events in the same methods, so
// the two cannot disagree. Events come from the data-path threads: each method takes one
// lock, adds to fixed fields and returns; no allocation (the per-spool and per-kind slots
// exist before the first event), no logging.

/// Bytes per second over the last `window` whole seconds, from a ring of per-second sums.
public struct RateRing {
    public init() {}
    public static let slots = 16
    private var sums = [UInt64](repeating: 0, count: RateRing.slots)
    private var seconds = [Int](repeating: -1, count: RateRing.slots)

    public mutating func add(_ n: UInt64, at now: Double) {
        let s = Int(now)
        let i = s % Self.slots
        if seconds[i] != s { seconds[i] = s; sums[i] = 0 }
        sums[i] &+= n
    }

    /// The mean rate over the `window` seconds before the current one (which is not over yet).
    public func rate(window: Int = 10, at now: Double) -> Double {
        let s = Int(now)
        var total: UInt64 = 0
        for back in 1...min(window, Self.slots - 1) {
            let t = s - back
            guard t >= 0 else { break }
            let i = t % Self.slots
            if seconds[i] == t { total &+= sums[i] }
        }
        return Double(total) / Double(window)
    }
}

/// Errors counted by kind, each with its counter `LABEL{kind="..."}`; a slot for every kind
/// from the start. Used under its owner's lock; the returned counter is incremented after it.
public struct ErrorCounts<Kind: CaseIterable & Hashable & RawRepresentable> where Kind.RawValue == String {
    public private(set) var counts: [Kind: UInt64]
    private let metrics: [Kind: Counter]

    public init(label: String, factory: any MetricsFactory) {
        counts = Dictionary(uniqueKeysWithValues: Kind.allCases.map { ($0, 0) })
        metrics = Dictionary(uniqueKeysWithValues: Kind.allCases.map {
            ($0, Counter(label: label, dimensions: [("kind", $0.rawValue)], factory: factory))
        })
    }

    /// Counts one error of `kind`; returns its metric, to be incremented outside the lock.
    public mutating func count(_ kind: Kind) -> Counter {
        counts[kind, default: 0] += 1
        return metrics[kind]!
    }
}
