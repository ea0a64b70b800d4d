import Foundation
import Glibc
import SpoolshipCore
import SpoolshipIO

/// Checks a collector's data dir against its ledgers: every committed segment present with
/// the size and checksum recorded, and no file that the ledger does not know.
public struct VerifyReport: Sendable {
    public var checked = 0
    public var bytes: UInt64 = 0
    public var problems: [String] = []
    /// Ledger entries whose file is gone (consumers may remove committed files; reported apart).
    public var missing: [String] = []
    public var ok: Bool { problems.isEmpty && missing.isEmpty }
}

public enum Verifier {
    public static func verify(dataDir: String) throws -> VerifyReport {
        var report = VerifyReport()
        let ledgerDir = "\(dataDir)/.spoolship/ledger"
        let fm = FileManager.default
        guard fm.fileExists(atPath: ledgerDir) else {
            throw DaemonError("\(dataDir) is not a spoolship data dir (no .spoolship/ledger)")
        }
        var known: Set<String> = []
        for file in try fm.contentsOfDirectory(atPath: ledgerDir).sorted() where file.hasSuffix(".ledger") {
            let agent = String(file.dropLast(".ledger".count))
            let fd = try Files.open("\(ledgerDir)/\(file)", O_RDONLY)
            let contents = try RecordLog.parse(try Files.readAll(fd), kind: LedgerEntry.kind, version: LedgerEntry.version, as: LedgerEntry.self)
            if contents.droppedTail { report.problems.append("\(ledgerDir)/\(file): damaged tail after byte \(contents.goodBytes)") }
            if contents.damagedLines > 0 { report.problems.append("\(ledgerDir)/\(file): \(contents.damagedLines) damaged line(s)") }
            for e in contents.records {
                let rel = "\(agent)/\(e.spool)/\(e.stored)"
                known.insert(rel)
                let path = "\(dataDir)/\(rel)"
                guard let f = try? Files.open(path, O_RDONLY | O_NOFOLLOW) else {
                    report.missing.append(rel)
                    continue
                }
                let size = UInt64(try Files.fstat(f).st_size)
                if size != e.size {
                    report.problems.append("\(rel): size \(size), ledger says \(e.size)")
                    continue
                }
                let crc = try Files.checksum(f, size: Int64(size))
                if crc != e.crc {
                    report.problems.append("\(rel): checksum \(hex32(crc)), ledger says \(hex32(e.crc))")
                    continue
                }
                report.checked += 1
                report.bytes += size
            }
        }
        for agent in try fm.contentsOfDirectory(atPath: dataDir).sorted() where !agent.hasPrefix(".") {
            let adir = "\(dataDir)/\(agent)"
            guard let spools = try? fm.contentsOfDirectory(atPath: adir) else { continue }
            for spool in spools.sorted() {
                guard let names = try? fm.contentsOfDirectory(atPath: "\(adir)/\(spool)") else { continue }
                for n in names.sorted() where !known.contains("\(agent)/\(spool)/\(n)") {
                    report.problems.append("\(agent)/\(spool)/\(n): not in the ledger")
                }
            }
        }
        return report
    }
}
