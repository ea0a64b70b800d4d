import Foundation
import Glibc
import SpoolshipCore
import SpoolshipDaemon
import SpoolshipIO

extension CollectorConnection {
    /// Whether small segments are received into unnamed partials (`PartialFile`): only where
    /// commits sync the whole file system, whose sync after the links makes them durable.
    var unnamedPartials: Bool { config.commitSync == .filesystem && Files.syncfsReportsErrors }

    /// OFFER, on the reader thread. The decision is `OfferAdmission`'s (SpoolshipCore); this
    /// answers its questions from the data dir, each when it asks (the look-ups have effects:
    /// a segment found on disk is recorded, a partial resumed is synced, left-overs are
    /// dropped), and carries out its answer.
    func handleOffer(_ o: Offer) throws {
        guard let store = store else { return }
        let limits = OfferAdmission.Limits(largestSegment: config.largestSegment, window: config.window,
                                           maxPartialBytes: config.maxPartialBytes, freeSpaceReserve: config.freeSpaceReserve)
        if let r = OfferAdmission.screen(o, limits: limits, openOffers: transfers.count, tagOpen: transfers[o.tag] != nil) {
            throw Refusal(r, tag: o.tag)
        }
        // Received whole under an earlier tag and queued for its commit: answered once that
        // has ended (from the ledger, if it committed).
        durability?.waitForCommit(of: o.key)
        // The same segment offered again under a new tag (the agent sealed it again): the
        // newer offer replaces the older one, and its partial is kept.
        if let oldTag = transfers.tag(of: o.key), let t = transfers[oldTag] {
            if t.file.isOpen && !t.file.isUnnamed { store.leave(t.partialName, bytes: UInt64(max(0, t.written))) }
            // Retired, not closed: a checkpoint of it may be queued on the durability thread,
            // and must neither sync a closed descriptor nor unlink the name the new offer uses.
            // Its descriptor closes when the last reference goes.
            t.retired = true
            transfers[oldTag] = nil
        }
        let pname = o.key.partialFileName
        let label = store.dataDir.layout.partialFilePath(agent: store.id, name: pname)
        // The partial's file, once looked at (a resumed one is open).
        var file = PartialFile(name: pname, label: label, unnamed: unnamedPartials && o.key.size <= CollectorConfig.unnamedPartialLimit)
        var facts = OfferAdmission.Facts(
            storeBroken: store.broken,
            onOffer: transfers.onOffer,
            coming: transfers.coming,
            leftoverBytes: 0)
        while true {
            switch OfferAdmission.decide(o, agentID: store.id, facts: facts, limits: limits) {
            case .lookUpCommitted:
                facts.committed = try store.committedName(o.key) != nil || foundOnDisk(o.key, in: store)
            case .lookAtPartial:
                (file, facts.heldBytes) = try resume(o.key, file: file, in: store)
                // From here this segment's partial counts as on offer (at the segment's full
                // size), not as left over; if the offer is turned down, it is left over again.
                store.adopt(pname)
                facts.leftoverBytes = store.leftoverBytes
            case .dropLeftovers(let bytes):
                facts.droppedBytes = store.dropLeftovers(freeing: bytes, except: pname, logger: logger)
            case .measureFreeSpace:
                facts.freeBytes = Files.freeBytes(config.dataDir).map { .bytes($0) } ?? .unknown
            case .refuse(let r):
                throw Refusal(r, tag: o.tag)
            case .committed:
                try send([.answer(tag: o.tag, status: .committed, offset: o.key.size)])
                return
            case .deferred(let d):
                switch d.reason {
                case .partialLimit(let total, let limit):
                    logger.notice("deferring a segment: the agent's unfinished data would pass its partial limit", metadata: [
                        "spool.name": "\(o.key.spool)", "segment.name": "\(o.key.name)", "bytes.unfinished": "\(total)", "bytes.limit": "\(limit)"])
                    collector.stats.error(.partialLimit)
                case .noSpace(let free, let needed, let reserve):
                    logger.warning("refusing a segment: not enough free space above the reserve", metadata: [
                        "spool.name": "\(o.key.spool)", "segment.name": "\(o.key.name)", "bytes.free": "\(free)", "bytes.needed": "\(needed)", "bytes.reserve": "\(reserve)"])
                    collector.stats.error(.noSpace)
                }
                let held = facts.heldBytes ?? 0
                let hadFile = file.isOpen && !file.isUnnamed
                try? file.close()
                if hadFile { store.leave(pname, bytes: held) }
                // For this segment only: the connection and the transfers under way go on.
                try send([.error(code: d.code.rawValue, tag: o.tag, message: d.message)])
                return
            case .sendFrom(let held):
                transfers[o.tag] = Transfer(tag: o.tag, key: o.key, file: file, held: Int64(held))
                stats.offersOpen(transfers.count)
                // Counted once the offer is taken (a deferred one is counted when it is taken
                // later), as the agent counts it when it hears this answer.
                if held > 0 { collector.stats.resumed(bytes: held) }
                try send([.answer(tag: o.tag, status: .sendFrom, offset: held)])
                return
            }
        }
    }

    /// A segment committed on disk but not in the ledger (a crash between the commit rename
    /// and the ledger write): recorded now.
    private func foundOnDisk(_ key: SegmentKey, in store: AgentStore) throws -> Bool {
        guard let name = try store.findOnDisk(key) else { return false }
        try store.record([LedgerEntry(key: key, stored: name, time: Int64(Date().timeIntervalSince1970))])
        logger.notice("segment found committed on disk; recorded it in the ledger", metadata: ["spool.name": "\(key.spool)", "segment.name": "\(name)"])
        return true
    }

    /// The segment's partial, if there is one: made durable first (R1), so that a cut costs
    /// only what was in flight, and answered from. A failed sync poisons the file (R2): it is
    /// discarded and the segment starts over. Returns the partial (open if resumed) and its
    /// durable bytes.
    private func resume(_ key: SegmentKey, file: PartialFile, in store: AgentStore) throws -> (PartialFile, UInt64) {
        let pname = file.name, label = file.label
        // Only a partial left behind can be on disk: an earlier connection's, or this one's
        // from an offer of the same segment that this one replaced (`leftovers` holds them all,
        // as read at the store's first use and kept since). The rest need no look-up.
        guard store.leftovers[pname] != nil,
              let st = try Files.statAt(store.partialDir, pname, label: label), (st.st_mode & S_IFMT) == S_IFREG else {
            return (file, 0)
        }
        let resumed = PartialFile(resuming: try Files.openBeneath(store.partialDir, pname, O_RDWR, label: label), name: pname, label: label)
        var held: Int64 = 0
        var kept = resumed
        do {
            guard let f = resumed.descriptor else { throw DaemonError("no partial file for \(key.name)") }
            var size = Int64(try Files.fstat(f).st_size)
            if UInt64(size) > key.size {
                // Longer than the segment: not ours to trust. Start over.
                try Files.truncate(f, 0)
                size = 0
            }
            try Files.fdatasync(f)
            try Files.fsync(store.partialDir)
            held = size
        } catch {
            logger.error("partial could not be made durable; discarding it", metadata: ["path": "\(label)", "error": "\(error)"])
            try? resumed.close()
            try Files.unlink(store.partialDir, pname, label: label)
            held = 0
            kept = file
        }
        if held > 0 {
            logger.info("resuming segment", metadata: ["spool.name": "\(key.spool)", "segment.name": "\(key.name)", "offset": "\(held)"])
        }
        return (kept, UInt64(held))
    }
}
