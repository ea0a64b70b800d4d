import ArgumentParser
import Foundation
import Glibc
import SpoolshipDaemon

struct Verify: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Check every committed segment of a collector's data dir against its ledger.",
        discussion: "Prints a line for each corrupt, missing or unknown file and each damaged ledger; exits 1 if there is any. On a terminal, a progress bar on standard error.")

    @Argument(help: "The collector's data dir.")
    var dataDir: String

    func run() throws {
        let bar = isatty(2) == 1 ? ProgressBar() : nil
        let report = try Verifier.verify(dataDir: dataDir) { p in
            bar?.draw(p)
        }
        bar?.clear()
        for c in report.corrupt { print("CORRUPT  \(c)") }
        for m in report.missing { print("MISSING  \(m)") }
        for u in report.unknown { print("UNKNOWN  \(u)") }
        for d in report.damaged { print("DAMAGED  \(d)") }
        print("\(report.checked) segment(s), \(report.bytes) bytes verified; \(report.corrupt.count) corrupt, \(report.missing.count) missing, \(report.unknown.count) unknown, \(report.damaged.count) damaged ledger problem(s)")
        if !report.ok { throw ExitCode(1) }
    }
}

/// A one-line progress bar on standard error (a terminal), redrawn at most every 100 ms and
/// at the end.
final class ProgressBar {
    private var last = 0.0
    private var drawn = false

    func draw(_ p: VerifyProgress) {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        let now = Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
        let finished = p.entries == p.totalEntries
        guard !drawn || finished || now - last >= 0.1 else { return }
        last = now
        drawn = true
        let fraction = p.totalBytes > 0 ? Double(p.bytes) / Double(p.totalBytes) : (p.totalEntries > 0 ? Double(p.entries) / Double(p.totalEntries) : 1)
        let width = 30
        let full = min(width, Int(fraction * Double(width)))
        let line = "verify [" + String(repeating: "#", count: full) + String(repeating: " ", count: width - full) + "] "
            + "\(p.entries)/\(p.totalEntries) segments, \(mib(p.bytes))/\(mib(p.totalBytes)) MiB"
        write("\r\(line)\u{1B}[K")
    }

    func clear() { if drawn { write("\r\u{1B}[K") } }

    private func mib(_ b: UInt64) -> String { String(format: "%.1f", Double(b) / 1048576) }
    private func write(_ s: String) { _ = s.withCString { Glibc.write(2, $0, strlen($0)) } }
}
