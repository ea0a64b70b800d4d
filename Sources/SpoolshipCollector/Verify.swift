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
        let ledgerDir = "\(dataDir)/.spoolship/ledger"
        let fm = FileManager.default
        guard fm.fileExists(atPath: ledgerDir) else {
            throw DaemonError("\(dataDir) is not a spoolship data dir (no .spoolship/ledger)")
        }
        // First every ledger, so that the totals are known before any file is read.
        var entries: [(agent: String, entry: LedgerEntry)] = []
        for file in try fm.contentsOfDirectory(atPath: ledgerDir).sorted() where file.hasSuffix(".ledger") {
            let agent = String(file.dropLast(".ledger".count))
            let fd = try Files.open("\(ledgerDir)/\(file)", O_RDONLY)
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
            let rel = "\(agent)/\(e.spool)/\(e.stored)"
            known.insert(rel)
            let path = "\(dataDir)/\(rel)"
            guard let f = try? Files.open(path, O_RDONLY | O_NOFOLLOW) else {
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
        for agent in try fm.contentsOfDirectory(atPath: dataDir).sorted() where !agent.hasPrefix(".") {
            let adir = "\(dataDir)/\(agent)"
            guard let spools = try? fm.contentsOfDirectory(atPath: adir) else { continue }
            for spool in spools.sorted() {
                guard let names = try? fm.contentsOfDirectory(atPath: "\(adir)/\(spool)") else { continue }
                for n in names.sorted() where !known.contains("\(agent)/\(spool)/\(n)") {
                    report.unknown.append("\(agent)/\(spool)/\(n): not in the ledger")
                }
            }
        }
        return report
    }
}
