import Foundation
import Glibc
import SpoolshipCore
import SpoolshipIO
import SpoolshipDaemon

/// Checks a collector's data dir against its ledgers: every committed segment present with
/// the size and checksum recorded, and no file that the ledger does not know.
public struct VerifyReport: Sendable {
    /// Segments whose file matches its ledger entry, and their bytes.
    public var checked = 0
    public var bytes: UInt64 = 0
    /// Files whose size or checksum differs from the ledger (a truncated file is one).
    public var corrupt: [String] = []
    /// Ledger entries whose file is gone (consumers may remove committed files).
    public var missing: [String] = []
    /// Files in an agent's spool directories that no ledger knows.
    public var unknown: [String] = []
    /// Ledgers with a damaged tail or damaged lines.
    public var damaged: [String] = []
    /// Everything but the missing files.
    public var problems: [String] { corrupt + unknown + damaged }
    public var ok: Bool { corrupt.isEmpty && missing.isEmpty && unknown.isEmpty && damaged.isEmpty }
}

/// How far a verify has gone: ledger entries looked at and their bytes, of the totals.
public struct VerifyProgress: Sendable {
    public var entries = 0
    public var totalEntries = 0
    public var bytes: UInt64 = 0
    public var totalBytes: UInt64 = 0
}

public enum Verifier {
    public static func verify(dataDir: String, progress: (VerifyProgress) -> Void = { _ in }) throws -> VerifyReport {
        var report = VerifyReport()
        let layout = DataDirLayout(path: dataDir)
        let ledgerDir = layout.ledgerRootPath
        // Everything below the data dir is listed and opened through descriptors, beneath it.
        guard let root = try? Files.openDirectory(dataDir),
              let ledgers = try? Files.openBeneath(root, DataDirLayout.ledgerRelativePath, O_RDONLY | O_DIRECTORY, label: ledgerDir)
        else {
            throw DaemonError("\(dataDir) is not a spoolship data dir (no \(DataDirLayout.ledgerRelativePath))")
        }
        // First every ledger, so that the totals are known before any file is read.
        var entries: [(agent: String, entry: LedgerEntry)] = []
        for file in try Files.entries(of: ledgers).compactMap(\.name).sorted() {
            guard let agent = DataDirLayout.agent(ofLedgerFile: file) else { continue }
            let fd = try Files.openBeneath(ledgers, file, O_RDONLY, label: "\(ledgerDir)/\(file)")
            let contents = try RecordLog.parse(try Files.readAll(fd), kind: LedgerEntry.kind, version: LedgerEntry.version, as: LedgerEntry.self)
            if contents.droppedTail { report.damaged.append("\(ledgerDir)/\(file): damaged tail after byte \(contents.goodBytes)") }
            if contents.damagedLines > 0 { report.damaged.append("\(ledgerDir)/\(file): \(contents.damagedLines) damaged line(s)") }
            for e in contents.records { entries.append((agent, e)) }
        }
        var p = VerifyProgress(totalEntries: entries.count, totalBytes: entries.reduce(0) { $0 + $1.entry.size })
        progress(p)
        var known: Set<String> = []
        for (agent, e) in entries {
            defer { p.entries += 1; p.bytes += e.size; progress(p) }
            let rel = DataDirLayout.relative(agent: agent, spool: e.spool, name: e.stored)
            known.insert(rel)
            let path = layout.segmentPath(agent: agent, spool: e.spool, name: e.stored)
            guard let f = try? Files.openBeneath(root, rel, O_RDONLY | O_NOFOLLOW, label: path) else {
                report.missing.append("\(rel): in the ledger (\(e.size) bytes), not on disk")
                continue
            }
            let size = UInt64(try Files.fstat(f).st_size)
            if size != e.size {
                let what = size < e.size ? "truncated" : "longer than committed"
                report.corrupt.append("\(rel): \(what): size \(size), ledger says \(e.size)")
                continue
            }
            let crc = try Files.checksum(f, size: Int64(size))
            if crc != e.crc {
                report.corrupt.append("\(rel): checksum \(hex32(crc)), ledger says \(hex32(e.crc))")
                continue
            }
            report.checked += 1
            report.bytes += size
        }
        for agent in try Files.entries(of: root).compactMap(\.name).sorted() where DataDirLayout.isAgentDirectory(agent) {
            guard let adir = try? Files.openBeneath(root, agent, O_RDONLY | O_DIRECTORY, label: layout.agentPath(agent)),
                  let spools = try? Files.entries(of: adir) else { continue }
            for spool in spools.compactMap(\.name).sorted() {
                guard let sdir = try? Files.openBeneath(adir, spool, O_RDONLY | O_DIRECTORY, label: layout.spoolPath(agent: agent, spool: spool)),
                      let names = try? Files.entries(of: sdir) else { continue }
                for n in names.map(\.display).sorted() where !known.contains(DataDirLayout.relative(agent: agent, spool: spool, name: n)) {
                    report.unknown.append("\(DataDirLayout.relative(agent: agent, spool: spool, name: n)): not in the ledger")
                }
            }
        }
        return report
    }
}
