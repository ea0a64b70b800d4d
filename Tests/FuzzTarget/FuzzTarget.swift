import SpoolshipCore

/// One fuzz input, run the way the daemons read their peers. libFuzzer calls it through
/// Tests/Fuzz (`make fuzz`); the test suite replays Tests/FuzzCorpus through it.
///
/// The first byte chooses:
///   bit 0  the side: 0, the collector reading an agent (preamble, then each frame's header
///          and body parsed as `readFrame` does, driven through `CollectorHandshake` and, once
///          accepted, the collector's own OFFER and DATA rules, `OfferAdmission`); 1, an
///          agent reading a collector (the incremental `FrameDecoder`, fed in slices).
///   bit 1  whether the collector requires credentials.
///   bits 2-7  how the agent's side slices its input.
/// Every frame that decodes must encode and decode back to itself, and decoding in slices
/// must give what decoding at once gives. A violation traps: that is a crash to libFuzzer.
public enum FuzzTarget {
    /// How far an input got: the replay test checks that the corpus reaches every stage.
    public struct Reach: OptionSet, Sendable {
        public let rawValue: Int
        public init(rawValue: Int) { self.rawValue = rawValue }
        public static let frame = Reach(rawValue: 1)
        public static let challenged = Reach(rawValue: 2)
        public static let accepted = Reach(rawValue: 4)
        public static let authenticated = Reach(rawValue: 8)
        public static let offered = Reach(rawValue: 16)
        public static let payload = Reach(rawValue: 32)
        public static let refused = Reach(rawValue: 64)
        public static let agentSide = Reach(rawValue: 128)
    }

    /// The secret the fuzzed collector knows agent "fuzz-agent" by, and its fixed nonce.
    static let secret = Array(repeating: UInt8(0x5a), count: 32)
    static let nonce = Array(repeating: UInt8(0xa5), count: Auth.nonceSize)
    static let maxBody = 8192
    /// The collector's defaults (CollectorConfig): max-segment-size 2^40, a partial limit of
    /// 64 GiB (so the largest segment is 64 GiB), a window of 512, a reserve of 256 MiB.
    static let limits = OfferAdmission.Limits(largestSegment: min(1 << 40, 64 << 30), window: 512,
                                              maxPartialBytes: 64 << 30, freeSpaceReserve: 256 << 20)
    /// The free space the fuzzed collector's disk has.
    static let freeBytes: UInt64 = 1 << 40

    @discardableResult
    public static func run(_ input: [UInt8]) -> Reach {
        guard let mode = input.first else { return [] }
        let rest = input.dropFirst()
        if mode & 1 == 0 {
            return collectorSide(rest, requireAuth: mode & 2 != 0)
        } else {
            return agentSide(Array(rest), slicing: Int(mode >> 2))
        }
    }

    static func checkRoundTrip(_ frame: Frame) {
        let bytes = FrameWriter.encode(frame)
        guard let (type, length) = try? FrameCodec.parseHeader(bytes.prefix(Wire.headerSize), maxBody: Int.max),
              length == bytes.count - Wire.headerSize,
              let again = try? FrameCodec.parseBody(type, bytes[Wire.headerSize...])
        else { fatalError("\(frame) does not decode after encoding") }
        precondition(again == frame, "\(frame) decodes as \(again) after encoding")
    }

    /// As `CollectorConnection.handshake` and `readLoop`, with the collector's own OFFER and
    /// DATA rules (`OfferAdmission`): stops at the first refusal, as the connection would close.
    static func collectorSide(_ bytes: ArraySlice<UInt8>, requireAuth: Bool) -> Reach {
        var reach: Reach = []
        var rest = bytes
        func take(_ n: Int) -> ArraySlice<UInt8>? {
            guard rest.count >= n else { return nil }
            defer { rest = rest.dropFirst(n) }
            return rest.prefix(n)
        }
        guard let pre = take(Wire.preamble.count), Array(pre) == Wire.preamble else { return reach }
        var handshake = CollectorHandshake(agents: requireAuth ? ["fuzz-agent": secret] : nil, nonce: { nonce })
        var accepted = false
        // The open offers: each one's segment and the offset its bytes have reached.
        var offers: [UInt64: (key: SegmentKey, expected: UInt64)] = [:]
        var hello: Hello?
        while let header = take(Wire.headerSize) {
            let frame: Frame
            do {
                let (type, length) = try FrameCodec.parseHeader(header, maxBody: maxBody)
                precondition(length <= maxBody, "a frame body of \(length) bytes passed a limit of \(maxBody)")
                guard let body = take(length) else { return reach }
                frame = try FrameCodec.parseBody(type, body)
            } catch {
                return reach.union(.refused)
            }
            reach.insert(.frame)
            checkRoundTrip(frame)
            if !accepted {
                if case .hello(let h) = frame, hello == nil { hello = h }
                do {
                    switch try handshake.receive(frame) {
                    case .send(let frames):
                        for f in frames { checkRoundTrip(f) }
                        reach.insert(.challenged)
                    case .accepted(let id):
                        precondition((try? Names.validateIdentifier(id, what: "agent id")) != nil, "accepted a bad agent id \(id)")
                        precondition(id == hello?.agentID, "accepted \(id), but HELLO said \(String(describing: hello))")
                        if requireAuth {
                            // Only the proof made with the secret and both nonces opens the door.
                            guard case .auth(let proof) = frame, let h = hello else { preconditionFailure("accepted \(id) without AUTH") }
                            precondition(proof == Auth.agentProof(secret: secret, agentID: id, agentNonce: h.auth, collectorNonce: nonce),
                                         "accepted agent \(id) with a wrong proof")
                            reach.insert(.authenticated)
                        }
                        reach.insert(.accepted)
                        accepted = true
                    }
                } catch {
                    return reach.union(.refused)
                }
                continue
            }
            switch frame {
            case .offer(let o):
                // The collector's own decision (OfferAdmission), for a fresh data dir: nothing
                // committed, no partial, nothing left over, the disk roomy.
                if OfferAdmission.screen(o, limits: limits, openOffers: offers.count, tagOpen: offers[o.tag] != nil) != nil {
                    return reach.union(.refused)
                }
                let partial = o.key.partialFileName
                precondition(partial.count == 37 && !partial.contains("/"), "partial name \(partial)")
                // A newer offer of the same segment replaces the older one.
                for (tag, open) in offers where open.key == o.key { offers[tag] = nil }
                var facts = OfferAdmission.Facts(onOffer: offers.values.reduce(0) { $0 + $1.key.size },
                                                 coming: offers.values.reduce(0) { $0 + ($1.key.size - $1.expected) })
                decision: while true {
                    switch OfferAdmission.decide(o, agentID: hello?.agentID ?? "?", facts: facts, limits: limits) {
                    case .lookUpCommitted: facts.committed = false
                    case .lookAtPartial: facts.heldBytes = 0
                    case .dropLeftovers: facts.droppedBytes = 0
                    case .measureFreeSpace: facts.freeBytes = .bytes(freeBytes)
                    case .refuse: return reach.union(.refused)
                    case .committed: preconditionFailure("\(o.key) committed on a fresh data dir")
                    case .deferred: break decision
                    case .sendFrom(let offset):
                        precondition(offset == 0, "\(o.key) resumed from \(offset) with no partial")
                        offers[o.tag] = (o.key, offset)
                        reach.insert(.offered)
                        break decision
                    }
                }
            case .data(let tag, let offset, let length):
                if OfferAdmission.checkData(tag: tag, offset: offset, length: length, open: offers[tag]) != nil {
                    return reach.union(.refused)
                }
                // The payload follows the frame; the collector splices it.
                guard take(Int(length)) != nil else { return reach }
                let (key, expected) = offers[tag]!
                // Complete: committed, and the offer closes.
                offers[tag] = expected + length == key.size ? nil : (key, expected + length)
                reach.insert(.payload)
            case .ping:
                break
            default:
                return reach.union(.refused)
            }
        }
        return reach
    }

    static func agentSide(_ bytes: [UInt8], slicing: Int) -> Reach {
        func decodeAll(_ slices: [ArraySlice<UInt8>]) -> ([Frame], Bool) {
            var decoder = FrameDecoder(maxBody: maxBody)
            var frames: [Frame] = []
            for s in slices {
                decoder.feed(s)
                do {
                    while let f = try decoder.next() {
                        frames.append(f)
                        if case .data(_, _, let length) = f {
                            // What follows a DATA frame is its payload, not frames.
                            _ = decoder.takeBuffered(upTo: Int(min(length, UInt64(Int.max))))
                            return (frames, false)
                        }
                    }
                } catch {
                    return (frames, true)
                }
            }
            return (frames, false)
        }
        var slices: [ArraySlice<UInt8>] = []
        var at = 0
        var step = slicing + 1
        while at < bytes.count {
            let n = min(step, bytes.count - at)
            slices.append(bytes[at..<at + n])
            at += n
            step = step * 5 % 67 + 1
        }
        let (whole, wholeFailed) = decodeAll([bytes[...]])
        let (sliced, slicedFailed) = decodeAll(slices)
        for f in whole { checkRoundTrip(f) }
        precondition(sliced == whole && slicedFailed == wholeFailed,
                     "slicing changed the outcome: \(whole) (failed: \(wholeFailed)) vs \(sliced) (failed: \(slicedFailed))")
        var reach: Reach = [.agentSide]
        if !whole.isEmpty { reach.insert(.frame) }
        if wholeFailed { reach.insert(.refused) }
        return reach
    }

    // MARK: seeds

    /// Well-formed conversations to start fuzzing from, one per stage (`spoolship-fuzz --seeds`).
    public static func seeds() -> [String: [UInt8]] {
        func frames(_ fs: [Frame]) -> [UInt8] {
            var w = FrameWriter()
            for f in fs { w.append(f) }
            return w.bytes
        }
        let key = SegmentKey(spool: "app", name: "a.log.0000000001", size: 10, crc: 0x1234_5678)
        let afterHello = frames([.offer(Offer(tag: 1, kind: .log, key: key)), .data(tag: 1, offset: 0, length: 10)])
            + Array(repeating: 0x61, count: 10) + frames([.ping(7)])
        let agentNonce = Array(repeating: UInt8(0x11), count: Auth.nonceSize)
        let proof = Auth.agentProof(secret: secret, agentID: "fuzz-agent", agentNonce: agentNonce, collectorNonce: nonce)
        let collectorFrames = frames([
            .challenge(nonce: nonce, proof: Auth.collectorProof(secret: secret, agentID: "fuzz-agent", agentNonce: agentNonce, collectorNonce: nonce)),
            .welcome(Welcome(collectorID: "central", maxFrameBody: 65536, maxSegmentSize: 1 << 40, window: 512)),
            .answer(tag: 1, status: .sendFrom, offset: 0), .checkpoint(tag: 1, offset: 5),
            .committed(tag: 1, storedName: "a.log.0000000001"), .pong(7),
            .error(code: ErrorCode.noSpaceRetry.rawValue, tag: 2, message: "no space; retry later"),
        ])
        return [
            "seed-open-session": [0] + Wire.preamble + frames([.hello(Hello(agentID: "fuzz-agent"))]) + afterHello,
            "seed-auth-session": [2] + Wire.preamble + frames([.hello(Hello(agentID: "fuzz-agent", auth: agentNonce)), .auth(proof: proof)]) + afterHello,
            "seed-auth-wrong-proof": [2] + Wire.preamble + frames([.hello(Hello(agentID: "fuzz-agent", auth: agentNonce)), .auth(proof: Array(repeating: 0, count: 32))]),
            "seed-agent-reads-collector": [1 | (3 << 2)] + Wire.preamble + collectorFrames,
            // The first crash make fuzz found (in this target, not in the daemons): a DATA
            // length beyond Int for an offer of 2^63 bytes. The collector itself now refuses
            // a max-segment-size above 2^62, so its own Int64 conversions cannot trap.
            "regress-offer-of-2^63-bytes": [0] + Wire.preamble + frames([
                .hello(Hello(agentID: "fuzz-agent")),
                .offer(Offer(tag: 1, kind: .blob, key: SegmentKey(spool: "s", name: "x", size: 1 << 63, crc: 0))),
                .data(tag: 1, offset: 0, length: 1 << 63)]),
        ]
    }
}
