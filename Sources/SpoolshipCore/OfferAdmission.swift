/// The collector's answer to an OFFER, and its rule for DATA, as decisions with no I/O. The
/// connection (SpoolshipCollector, `CollectorConnection.handleOffer` and `handleData`) and the
/// fuzz target (Tests/FuzzTarget) both call these, so the rules exist once.
///
/// An offer is judged in two steps:
///
///   1. `screen`: the offer on its own against the connection's limits (names, size, tag,
///      window). A refusal here closes the connection; nothing has been touched yet.
///   2. `decide`, asked again and again: it looks at the `Facts` the collector has gathered so
///      far and either answers or asks for the next fact, in the order the collector must learn
///      them (each look-up has effects of its own, so none is made that the answer does not
///      need):
///
///        store broken? ──yes──────────────────────────────► refuse (internal error)
///        committed? (ledger, then disk) ──yes─────────────► COMMITTED
///        durable bytes of its partial? (resume: sync them)
///        agent's unfinished data over its partial limit? ──► drop left-overs, oldest first,
///                                                            if that makes room; else defer
///        free space under the reserve? ──yes──────────────► defer ("no space, retry")
///        ─────────────────────────────────────────────────► SEND_FROM the durable bytes
public enum OfferAdmission {
    /// The collector's settings that admission reads.
    public struct Limits: Sendable, Equatable {
        /// The largest segment an agent may offer (the smaller of max-segment-size and the
        /// agent's partial limit).
        public var largestSegment: UInt64
        /// Offers an agent may have outstanding on one connection.
        public var window: UInt32
        /// What one agent's unfinished segments may take; 0: no limit.
        public var maxPartialBytes: UInt64
        /// Free space on the data dir's file system that incoming segments may not use; 0: none.
        public var freeSpaceReserve: UInt64

        public init(largestSegment: UInt64, window: UInt32, maxPartialBytes: UInt64, freeSpaceReserve: UInt64) {
            self.largestSegment = largestSegment
            self.window = window
            self.maxPartialBytes = maxPartialBytes
            self.freeSpaceReserve = freeSpaceReserve
        }
    }

    /// A refusal that ends the connection: an ERROR frame with `code` for the offer's tag, then
    /// the collector closes.
    public struct Refusal: Error, Equatable, Sendable, CustomStringConvertible {
        public var code: ErrorCode
        public var message: String
        public init(_ code: ErrorCode, _ message: String) {
            self.code = code
            self.message = message
        }
        public var description: String { "\(code): \(message)" }
    }

    /// An offer turned down for now, for this segment only: an ERROR frame for its tag, and the
    /// connection goes on (the agent offers it again later).
    public struct Deferral: Equatable, Sendable {
        public enum Reason: Equatable, Sendable {
            /// The agent's unfinished data (left-overs, offers open, this segment) would pass
            /// its limit.
            case partialLimit(unfinished: UInt64, limit: UInt64)
            /// Taking the segment would eat into the free-space reserve; `needed` counts what
            /// the offers already answered still have to bring.
            case noSpace(free: UInt64, needed: UInt64, reserve: UInt64)
        }
        public var reason: Reason
        public var code: ErrorCode
        public var message: String
    }

    /// Free space on the data dir's file system, as far as it is known.
    public enum FreeSpace: Equatable, Sendable {
        /// Not measured yet.
        case unmeasured
        /// statvfs failed: the reserve is not checked.
        case unknown
        case bytes(UInt64)
    }

    /// What the collector knows about the offered segment and the agent. The optional facts
    /// are learnt when `decide` asks for them.
    public struct Facts: Equatable, Sendable {
        /// Why the agent's store takes nothing any more (its ledger failed to sync), if so.
        public var storeBroken: String?
        /// Committed already, by the ledger or found on disk; nil: not looked up yet.
        public var committed: Bool?
        /// The durable bytes of the segment's partial file (0: none, or discarded); nil: not
        /// looked at yet.
        public var heldBytes: UInt64?
        /// The full sizes of the other offers open on this connection.
        public var onOffer: UInt64
        /// What those offers still have to bring.
        public var coming: UInt64
        /// The bytes of the agent's left-over partials (no offer has them open).
        public var leftoverBytes: UInt64
        /// Bytes freed by dropping left-overs; nil: none dropped yet.
        public var droppedBytes: UInt64?
        public var freeBytes: FreeSpace

        public init(storeBroken: String? = nil, committed: Bool? = nil, heldBytes: UInt64? = nil, onOffer: UInt64 = 0,
                    coming: UInt64 = 0, leftoverBytes: UInt64 = 0, droppedBytes: UInt64? = nil, freeBytes: FreeSpace = .unmeasured) {
            self.storeBroken = storeBroken
            self.committed = committed
            self.heldBytes = heldBytes
            self.onOffer = onOffer
            self.coming = coming
            self.leftoverBytes = leftoverBytes
            self.droppedBytes = droppedBytes
            self.freeBytes = freeBytes
        }
    }

    /// What `decide` answers: a question for the collector, or the answer to the agent.
    public enum Step: Equatable, Sendable {
        /// Look in the ledger, then on disk (a crash between the commit rename and the ledger
        /// write leaves a file there), and set `Facts.committed`.
        case lookUpCommitted
        /// Look for the segment's partial; if there is one, make its bytes durable (R1) or
        /// discard it (R2), and set `Facts.heldBytes`.
        case lookAtPartial
        /// Drop left-over partials, oldest first, to free at least this many bytes, and set
        /// `Facts.droppedBytes` to what was freed.
        case dropLeftovers(freeing: UInt64)
        /// Measure the free space on the data dir's file system and set `Facts.freeBytes`.
        case measureFreeSpace
        /// Close the connection with this error.
        case refuse(Refusal)
        /// Answer COMMITTED: nothing to send.
        case committed
        /// Answer SEND_FROM this offset: the offer is open.
        case sendFrom(UInt64)
        /// Turn this segment down for now.
        case deferred(Deferral)
    }

    /// Step 1: the offer against the connection's limits, before anything is touched.
    /// `openOffers` counts the offers open on the connection, `tagOpen` says whether one of
    /// them has this offer's tag.
    public static func screen(_ offer: Offer, limits: Limits, openOffers: Int, tagOpen: Bool) -> Refusal? {
        let key = offer.key
        do {
            try Names.validateIdentifier(key.spool, what: "spool name")
            try Names.validateSegmentName(key.name)
        } catch {
            return Refusal(.badName, "\(error)")
        }
        guard key.size <= limits.largestSegment else {
            return Refusal(.tooLarge, "segment \(key.spool)/\(key.name) claims \(key.size) bytes, more than the maximum of \(limits.largestSegment)")
        }
        guard !tagOpen else {
            return Refusal(.protocolViolation, "tag \(offer.tag) offered twice")
        }
        guard openOffers < Int(limits.window) else {
            return Refusal(.protocolViolation, "more than \(limits.window) offers outstanding; the window is \(limits.window)")
        }
        return nil
    }

    /// Step 2: the answer to a screened offer from `agentID`, or the next fact it needs.
    public static func decide(_ offer: Offer, agentID: String, facts: Facts, limits: Limits) -> Step {
        let size = offer.key.size
        if let broken = facts.storeBroken { return .refuse(Refusal(.internalError, broken)) }
        guard let committed = facts.committed else { return .lookUpCommitted }
        if committed { return .committed }
        guard let held = facts.heldBytes else { return .lookAtPartial }
        // The agent's partial limit: drop what it left behind, oldest first, before turning
        // an offer down.
        if limits.maxPartialBytes > 0 {
            let limit = limits.maxPartialBytes
            var total = facts.leftoverBytes + facts.onOffer + size
            // Left-overs are dropped only when that makes room: if the offers under way
            // already fill the limit, they are kept for the resends they may still save.
            if total > limit && facts.onOffer + size <= limit {
                guard let dropped = facts.droppedBytes else { return .dropLeftovers(freeing: total - limit) }
                total -= min(total, dropped)
            }
            if total > limit {
                return .deferred(Deferral(
                    reason: .partialLimit(unfinished: total, limit: limit), code: .partialLimit,
                    message: "agent \(agentID) has \(facts.onOffer) bytes of segments on offer; with \(size) more it would pass the collector's limit of \(limit) bytes of unfinished data per agent; retry later"))
            }
        }
        // The free-space reserve: accept only what fits beside it, counting what the offers
        // already answered on this connection still have to bring.
        if limits.freeSpaceReserve > 0 {
            switch facts.freeBytes {
            case .unmeasured: return .measureFreeSpace
            case .unknown: break
            case .bytes(let free):
                let needed = size - min(size, held)
                let reserve = limits.freeSpaceReserve
                if free < reserve + needed + facts.coming {
                    return .deferred(Deferral(
                        reason: .noSpace(free: free, needed: needed + facts.coming, reserve: reserve), code: .noSpaceRetry,
                        message: "no space on the collector: \(free) bytes free, \(needed + facts.coming) needed, \(reserve) kept in reserve; retry later"))
                }
            }
        }
        return .sendFrom(held)
    }

    /// The rule for a DATA frame: its tag names an open offer, it starts where that offer's
    /// bytes have reached (`expected`: the offset answered, plus the DATA before it), and it
    /// ends within the segment. `open` is the offer the tag names, nil if none is open.
    public static func checkData(tag: UInt64, offset: UInt64, length: UInt64, open: (key: SegmentKey, expected: UInt64)?) -> Refusal? {
        guard let (key, expected) = open else {
            return Refusal(.protocolViolation, "DATA for tag \(tag), which is not an open offer")
        }
        guard offset == expected else {
            return Refusal(.protocolViolation, "DATA for \(key.name) starts at offset \(offset), expected \(expected)")
        }
        // Written so that a hostile length cannot overflow the sum.
        guard length <= key.size, offset <= key.size - length else {
            return Refusal(.protocolViolation, "DATA for \(key.name) runs past its size \(key.size)")
        }
        return nil
    }
}
