import ArgumentParser
import Foundation
import SpoolshipDaemon

struct Verify: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Check every committed segment of a collector's data dir against its ledger.")

    @Argument(help: "The collector's data dir.")
    var dataDir: String

    func run() throws {
        let report = try Verifier.verify(dataDir: dataDir)
        for p in report.problems { print("PROBLEM  \(p)") }
        for m in report.missing { print("MISSING  \(m)") }
        print("\(report.checked) segment(s), \(report.bytes) bytes verified; \(report.problems.count) problem(s), \(report.missing.count) missing")
        if !report.ok { throw ExitCode(1) }
    }
}
