import Foundation
import Glibc
import Testing

/// `make bench` still runs and its output parses: its smallest workload (2, many small files,
/// at the --quick size of 300 files) once, against the rsync daemon with and without --fsync
/// (`--systems rsync,spoolship`: the TLS rows need an sshd and certificates, not this check).
/// No figure is judged here: performance is measured by `make bench`, not by the suite.
@Suite(.serialized) struct BenchmarkTests {
    static let repo = URL(fileURLWithPath: "\(#filePath)").deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    @Test func quickSmallFileWorkload_runsAndItsTableParses() throws {
        let out = try Harness.tempDir("bench-out")
        defer { Harness.remove(out) }
        // The benchmark's work directory must be on a disk file system (tmpfs ignores fsync).
        let work = "/var/tmp/spoolship-bench-test-\(getpid())"
        defer { Harness.remove(URL(fileURLWithPath: work)) }
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/bin/bash")
        p.arguments = ["bench/bench.sh", "--quick", "--only", "2", "--rounds", "1", "--systems", "rsync,spoolship"]
        p.currentDirectoryURL = Self.repo
        p.environment = ProcessInfo.processInfo.environment.merging(
            ["BIN": Harness.binDir.path, "WORK": work, "OUT": out.path]) { $1 }
        let pipe = Pipe()
        p.standardOutput = pipe
        p.standardError = pipe
        try p.run()
        let text = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        try #require(p.terminationStatus == 0, "bench.sh failed:\n\(text)")

        // results.tsv: a header, then one row per system, with numbers where numbers go.
        let tsv = try String(contentsOf: out.appendingPathComponent("results.tsv"), encoding: .utf8)
        let lines = tsv.split(separator: "\n").map { $0.split(separator: "\t", omittingEmptySubsequences: false).map(String.init) }
        let header = try #require(lines.first)
        #expect(header.prefix(5) == ["workload", "system", "wall_s", "rate", "unit"], "\(header)")
        let rows = lines.dropFirst().map { Dictionary(uniqueKeysWithValues: zip(header, $0)) }
        #expect(Set(rows.map { $0["system"] ?? "" }) == ["rsync --fsync", "rsync", "spoolship", "spoolship, delete"], "\(tsv)")
        for r in rows {
            #expect(r["workload"] == "2" && r["unit"] == "files/s", "\(r)")
            for k in ["wall_s", "rate", "send_cpu_s_per_gib", "recv_cpu_s_per_gib", "send_rss_mib", "recv_rss_mib"] {
                let v = Double(r[k] ?? "")
                #expect(v != nil && v! >= 0, "\(k) of \(r["system"] ?? "?") is not a number: \(r[k] ?? "missing")")
            }
            #expect((Double(r["wall_s"] ?? "") ?? 0) > 0 && (Double(r["rate"] ?? "") ?? 0) > 0, "\(r)")
        }
        // The printed ratios, with the targets they are judged against.
        for target in ["2: spoolship / rsync --fsync, files per second: ", "2: spoolship / rsync, files per second: ",
                       "2: spoolship, delete / rsync --fsync, files per second: ", "2: spoolship, CPU s per 1,000 files of the agent: "] {
            let line = text.split(separator: "\n").first { $0.hasPrefix(target) }
            let ratio = line.flatMap { Double($0.dropFirst(target.count).split(separator: " ").first ?? "") }
            #expect(ratio != nil && ratio! > 0, "no ratio line \"\(target)...\" in:\n\(text)")
        }
        #expect(FileManager.default.fileExists(atPath: out.appendingPathComponent("results.md").path))
    }
}
