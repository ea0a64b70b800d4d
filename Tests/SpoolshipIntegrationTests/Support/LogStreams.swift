import Foundation
import Glibc

/// A running `log-producer write` (Tests/LogProducer): appends numbered records to a log file.
final class LogProducer {
    let daemon: Daemon
    let recordSize: Int

    init(cluster: Cluster, file: URL, seconds: Double? = nil, records: Int? = nil, rate: Double? = nil, recordSize: Int = 100,
         reopen: String = "path", pidFile: URL? = nil, holdMs: Int? = nil, batch: Int = 1) throws {
        var args = ["write", "--file", file.path, "--record-size", "\(recordSize)", "--reopen", reopen, "--batch", "\(batch)"]
        if let s = seconds { args += ["--seconds", "\(s)"] }
        if let r = records { args += ["--records", "\(r)"] }
        if let r = rate { args += ["--rate", "\(r)"] }
        if let p = pidFile { args += ["--pid-file", p.path] }
        if let h = holdMs { args += ["--hold-ms", "\(h)"] }
        self.recordSize = recordSize
        daemon = try Daemon("log-producer", args, log: cluster.nextLog("producer"))
    }

    /// Waits for the producer to finish; returns how many records it wrote.
    func finish(timeout: Double = 120) throws -> Int {
        guard daemon.wait(timeout: timeout) == 0 else { throw TestFailure("producer failed: \(daemon.output)") }
        guard let line = daemon.output.split(separator: "\n").last(where: { $0.hasPrefix("records ") }),
            let n = Int(line.split(separator: " ")[1])
        else { throw TestFailure("producer printed no count: \(daemon.output)") }
        return n
    }

    /// Times (CLOCK_REALTIME ns) at which the producer reopened its file.
    var reopens: [Int64] {
        daemon.output.split(separator: "\n").filter { $0.hasPrefix("reopen ") }.compactMap { Int64($0.split(separator: " ")[1]) }
    }
}

/// Checks a log stream as committed at the collector: the segments `NAME.<SEQ>[.gz]` in name
/// order, decompressed with zcat where compressed, must hold records 0, 1, 2, ... with no gap,
/// no repeat and no torn record.
enum LogStreamCheck {
    struct Result {
        var records: Int
        var segments: [String]
        var bytes: Int
    }

    static func segments(in dir: URL, stream: String) -> [String] {
        Harness.files(in: dir).filter { n in
            guard n.hasPrefix(stream + ".") else { return false }
            var rest = n.dropFirst(stream.count + 1)
            if rest.hasSuffix(".gz") { rest = rest.dropLast(3) }
            return rest.count == 10 && rest.allSatisfy { $0.isNumber }
        }.sorted()
    }

    /// The stream's bytes as committed (compressed segments through zcat).
    static func contents(in dir: URL, stream: String) throws -> (Data, [String]) {
        let names = segments(in: dir, stream: stream)
        var all = Data()
        for n in names {
            let u = dir.appendingPathComponent(n)
            if n.hasSuffix(".gz") {
                all.append(try zcat(u))
            } else {
                all.append(try Data(contentsOf: u))
            }
        }
        return (all, names)
    }

    static func zcat(_ u: URL) throws -> Data {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/bin/sh")
        p.arguments = ["-c", "exec zcat \"$1\"", "zcat", u.path]
        let out = Pipe()
        p.standardOutput = out
        try p.run()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        guard p.terminationStatus == 0 else { throw TestFailure("zcat \(u.path) failed with \(p.terminationStatus)") }
        return data
    }

    /// Checks the records; throws naming the first gap, repeat or torn record.
    static func verify(in dir: URL, stream: String, recordSize: Int = 100) throws -> Result {
        let (data, names) = try contents(in: dir, stream: stream)
        let count = try verifyRecords(data, recordSize: recordSize)
        return Result(records: count, segments: names, bytes: data.count)
    }

    static func verifyRecords(_ data: Data, recordSize: Int) throws -> Int {
        try forEachRecord(data, recordSize: recordSize) { i, seq in
            guard seq == i else {
                throw TestFailure(seq < i ? "record \(seq) appears twice (at position \(i))" : "records \(i)..<\(seq) are missing")
            }
        }
    }

    /// Calls `body` with each record's position and number, in stream order; throws on a
    /// stream that is not whole records, or a record that is torn or does not end in a
    /// newline. Returns the number of records.
    @discardableResult
    static func forEachRecord(_ data: Data, recordSize: Int, _ body: (Int, Int) throws -> Void) throws -> Int {
        guard data.count % recordSize == 0 else {
            throw TestFailure("stream is \(data.count) bytes, not a whole number of \(recordSize)-byte records")
        }
        let n = data.count / recordSize
        try data.withUnsafeBytes { (p: UnsafeRawBufferPointer) in
            for i in 0..<n {
                let r = p.baseAddress! + i * recordSize
                var seq = 0
                for k in 0..<16 {
                    let c = r.load(fromByteOffset: k, as: UInt8.self)
                    guard c >= 48 && c <= 57 else { throw TestFailure("record \(i) is torn (byte \(k) is \(c))") }
                    seq = seq * 10 + Int(c - 48)
                }
                guard r.load(fromByteOffset: recordSize - 1, as: UInt8.self) == 10 else { throw TestFailure("record \(i) does not end in a newline") }
                try body(i, seq)
            }
        }
        return n
    }
}

extension Cluster {
    /// The agent's arguments for one log spool `app` on `spool`, with `settings` (lines of
    /// its `[[logs]]` table) in a config file of its own.
    func logSpoolArgs(_ spool: URL, settings: String) throws -> [String] {
        let config = try writeConfig("[[logs]]\nname = \"app\"\ndir = \"\(spool.path)\"\n" + settings + "\n")
        return agentArgs(spools: []) + ["--config", config.path]
    }

    /// A config file for the agent, written into the cluster's directory.
    func writeConfig(_ text: String, name: String = "agent.toml") throws -> URL {
        let u = root.appendingPathComponent(name)
        try text.write(to: u, atomically: true, encoding: .utf8)
        return u
    }
}
