import ArgumentParser
import Foundation
import Glibc
import SpoolshipDaemon
import SpoolshipCollector

struct Verify: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Check every committed segment of a collector's data dir against its ledger.",
        discussion: "Prints a line for each corrupt, missing or unknown file and each damaged ledger; exits 1 if there is any. On a terminal, a progress bar on standard error.")

    @Argument(help: "The collector's data dir.")
    var dataDir: String

    func run() throws {
        let bar = TerminalProgress.startIfTerminal()
        let report = try Verifier.verify(dataDir: dataDir) { p in
            let fraction = p.totalBytes > 0 ? Double(p.bytes) / Double(p.totalBytes)
                : (p.totalEntries > 0 ? Double(p.entries) / Double(p.totalEntries) : 1)
            bar?.draw("verify \(TerminalProgress.bar(fraction)) \(p.entries)/\(p.totalEntries) segments, \(TerminalProgress.mib(p.bytes))/\(TerminalProgress.mib(p.totalBytes)) MiB",
                      force: p.entries == p.totalEntries)
        }
        bar?.finish(keep: false)
        for c in report.corrupt { print("CORRUPT  \(LogText.escaped("\(c)"))") }
        for m in report.missing { print("MISSING  \(LogText.escaped("\(m)"))") }
        for u in report.unknown { print("UNKNOWN  \(LogText.escaped("\(u)"))") }
        for d in report.damaged { print("DAMAGED  \(LogText.escaped("\(d)"))") }
        print("\(report.checked) segment(s), \(report.bytes) bytes verified; \(report.corrupt.count) corrupt, \(report.missing.count) missing, \(report.unknown.count) unknown, \(report.damaged.count) damaged ledger problem(s)")
        if !report.ok { throw ExitCode(1) }
    }
}
