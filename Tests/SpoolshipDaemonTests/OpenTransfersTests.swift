@testable import SpoolshipCollector
import SpoolshipCore
import Testing

/// The collector's open offers keep the sums that the admission of each new offer needs
/// (bytes on offer, bytes still to come, the tag a segment is open under) as offers open,
/// receive and close. A model test: random operations, and after each, the kept sums against
/// the same sums taken over a plain dictionary of the open offers.
struct OpenTransfersTests {
    @Test func keptSums_matchSumsTakenOverTheOpenOffers() {
        var rng = SystemRandomNumberGenerator()
        var open = OpenTransfers()
        var model: [UInt64: Transfer] = [:]
        var nextTag: UInt64 = 1
        for step in 0..<5_000 {
            switch Int.random(in: 0..<10, using: &rng) {
            case 0..<4:
                // A new offer, maybe of a segment already open (the newer replaces the older).
                let key = SegmentKey(spool: "s", name: "n\(Int.random(in: 0..<40, using: &rng))", size: UInt64.random(in: 0..<5000, using: &rng), crc: 0)
                if let old = open.tag(of: key) {
                    open[old] = nil
                    model[old] = nil
                }
                let held = Int64.random(in: 0...Int64(key.size), using: &rng)
                let t = Transfer(tag: nextTag, key: key, file: PartialFile(name: "p", label: "p"), held: held)
                open[nextTag] = t
                model[nextTag] = t
                nextTag += 1
            case 4..<8:
                // Bytes received by an open offer (also past its size or back to 0: clamped).
                guard let t = model.values.randomElement(using: &rng) else { continue }
                let reached = Int64.random(in: -10...Int64(t.key.size) + 10, using: &rng)
                t.written = reached
                open.received(t, upTo: reached)
            case 8:
                // Closed: committed, withdrawn or replaced.
                guard let tag = model.keys.randomElement(using: &rng) else { continue }
                open[tag] = nil
                model[tag] = nil
            default:
                if Int.random(in: 0..<200, using: &rng) == 0 {
                    open.removeAll()
                    model.removeAll()
                }
            }
            let onOffer = model.values.reduce(UInt64(0)) { $0 + $1.key.size }
            let coming = model.values.reduce(UInt64(0)) { $0 + ($1.key.size - min($1.key.size, UInt64(max(0, $1.written)))) }
            #expect(open.count == model.count, "step \(step)")
            #expect(open.onOffer == onOffer, "step \(step)")
            #expect(open.coming == coming, "step \(step)")
            for (tag, t) in model { #expect(open.tag(of: t.key) == tag && open[tag] === t, "step \(step)") }
            if open.count != model.count || open.onOffer != onOffer || open.coming != coming { return }
        }
    }
}
