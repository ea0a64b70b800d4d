import Foundation
import Glibc
import Logging
import SpoolshipCore
import SpoolshipIO
import SpoolshipDaemon

/// Start-up recovery of the log spools, before any thread of the agent runs: finishes
/// rotations whose rename did not happen, forgets those whose file is gone, and adopts files
/// in a rotated directory that the journal does not know (a crash after the rename, or a lost
/// state dir), so that nothing rotated is left behind.
enum LogRecovery {
    /// Returns the log spools whose producers must be told to reopen once the agent runs (a
    /// rotation was pending or finished now: its producer may never have been told).
    static func recover(spools: [SpoolConfig], dirs: SpoolDirectories, table: RotationTable, sealed: [Segment],
                        ids: SegmentIDs, journal: AgentJournal, logger: Logger) throws -> Set<String> {
        var reopen: Set<String> = []
        try table.recovering { rotations, lastSeq in
            for (id, r) in rotations where !spools.contains(where: { $0.name == r.spool && $0.logs != nil }) {
                logger.warning("rotated file of a log spool no longer configured; forgetting it (it stays on disk)", metadata: ["spool.name": "\(r.spool)", "segment.name": "\(r.rawName)"])
                try journal.append([StateRecord(op: .done, id: id)], sync: false)
                rotations[id] = nil
            }
            for spool in spools where spool.logs != nil && spool.logs?.follows == false {
                guard let both = dirs.logDirectories(spool.name) else { continue }
                let (dir, rdir) = both
                let rlabel = "\(spool.directory)/\(LogNames.rotatedDirName)"
                var present = Set((try? Files.names(of: rdir)) ?? [])
                var renamedNow = false
                for (id, var r) in rotations where r.spool == spool.name {
                    // Its producer may never have been told to reopen (a crash right after the
                    // rename): tell it again; once more does no harm.
                    reopen.insert(spool.name)
                    if present.contains(r.rawName) || present.contains(r.gzName) {
                        let size = try Files.statAt(rdir, r.rawName, label: r.rawName).map { UInt64($0.st_size) } ?? r.sizeAtRotation
                        r.renamed(size: size, synced: false)
                    } else if let st = try Files.statAt(dir, r.stream, label: "\(spool.directory)/\(r.stream)"),
                        UInt64(st.st_dev) == r.dev, UInt64(st.st_ino) == r.ino,
                        try Files.renameNoReplace(dir, r.stream, rdir, r.rawName, label: "\(spool.directory)/\(r.stream)")
                    {
                        // Journaled, then the agent stopped before the rename: finish it.
                        logger.notice("finishing a rotation interrupted by a restart", metadata: ["spool.name": "\(spool.name)", "segment.name": "\(r.rawName)"])
                        r.renamed(size: UInt64(st.st_size), synced: false)
                        present.insert(r.rawName)
                        renamedNow = true
                    } else {
                        logger.error("rotated log file lost before it was shipped", metadata: ["spool.name": "\(spool.name)", "segment.name": "\(r.rawName)", "reason": "not found after a restart"])
                        try journal.append([StateRecord(op: .done, id: id)], sync: false)
                        rotations[id] = nil
                        continue
                    }
                    rotations[id] = r
                }
                if renamedNow {
                    try Files.fsync(rdir)
                    try Files.fsync(dir)
                }
                // Files the journal does not account for.
                let sealedNames = Set(sealed.filter { $0.spool == spool.name && $0.kind == .log }.map(\.name))
                let rotating = Set(rotations.values.filter { $0.spool == spool.name }.flatMap { [$0.rawName, $0.gzName] })
                var adopted: [Rotation] = []
                for name in present.sorted() {
                    if name.hasPrefix(".") {
                        if name.hasSuffix(".tmp") { _ = try? Files.unlink(rdir, name, label: "\(rlabel)/\(name)") }
                        continue  // reaper leftovers are the reaper's
                    }
                    if sealedNames.contains(name) || rotating.contains(name) { continue }
                    guard let p = LogNames.parse(segmentName: name) else {
                        logger.warning("unknown file in the rotated directory; leaving it", metadata: ["path": "\(rlabel)/\(name)"])
                        continue
                    }
                    let raw = LogNames.segmentName(stream: p.stream, seq: p.seq, compressed: false)
                    if !p.compressed && sealedNames.contains(LogNames.segmentName(stream: p.stream, seq: p.seq, compressed: true)) {
                        // Compressed and sealed; the agent stopped before removing the original.
                        try Files.unlink(rdir, name, label: "\(rlabel)/\(name)")
                        continue
                    }
                    if p.compressed && present.contains(raw) {
                        // Both, unknown: the original is the truth; compress it again.
                        try Files.unlink(rdir, name, label: "\(rlabel)/\(name)")
                        continue
                    }
                    guard let st = try Files.statAt(rdir, name, label: "\(rlabel)/\(name)"), (st.st_mode & S_IFMT) == S_IFREG else { continue }
                    let key = "\(spool.name)/\(p.stream)"
                    lastSeq[key] = max(lastSeq[key] ?? 0, p.seq)
                    var r = Rotation(id: ids.next(), spool: spool.name, stream: p.stream, seq: p.seq, dev: UInt64(st.st_dev), ino: UInt64(st.st_ino))
                    r.renamed(size: UInt64(st.st_size), synced: false)
                    adopted.append(r)
                    logger.notice("adopting a rotated file the agent state did not know", metadata: ["spool.name": "\(spool.name)", "segment.name": "\(name)"])
                }
                try journal.append(adopted.map(\.record), sync: true)
                for r in adopted { rotations[r.id] = r }
                if !adopted.isEmpty { reopen.insert(spool.name) }
            }
        }
        return reopen
    }
}
