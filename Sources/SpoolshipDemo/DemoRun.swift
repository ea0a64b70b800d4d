import Foundation
import Glibc
import SpoolshipDaemon
import SpoolshipCollector

/// One run of the demo: the paths, the two daemons, the producers, and what was seen arrive.
public final class DemoRun {
    public static let marker = ".spoolship-demo"
    public static let agentID = "demo-host"
    /// After the producers stop, everything must have arrived within this many seconds.
    public static let drainTimeout = 30.0
    /// A daemon must end within this many seconds of SIGTERM.
    public static let stopTimeout = 30.0
    /// How often the collector's data dir is looked at.
    public static let pollInterval = 0.02

    public let root: String
    public let seconds: Double
    public let out = DemoOutput()
    public let shared = Locked(DemoProduced())
    public var collector: DemoDaemon?
    public var agent: DemoDaemon?
    public var started = monotonicNow()
    public var producing = false

    public struct Committed {
        var spool: String
        var name: String
        var size: Int
    }
    public var committed: [Committed] = []
    public var seen: Set<String> = []

    public var inbox: String { "\(root)/inbox" }
    public var logs: String { "\(root)/logs" }
    public var data: String { "\(root)/data" }
    public var collected: String { "\(root)/data/\(Self.agentID)" }

    public init(root: String, seconds: Double) {
        self.root = root
        self.seconds = seconds
    }

    /// Refuses a `--dir` that the demo may not use: anything but a directory, or a directory
    /// with files in it that an earlier demo did not make (the demo empties it first).
    public static func check(dir: String) throws {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: dir, isDirectory: &isDir) else { return }
        guard isDir.boolValue else { throw DaemonError("--dir \(dir): exists and is not a directory") }
        let entries: [String]
        do { entries = try FileManager.default.contentsOfDirectory(atPath: dir) } catch {
            throw DaemonError("--dir \(dir): cannot list it: \(error.localizedDescription)")
        }
        if !entries.isEmpty && !entries.contains(marker) {
            throw DaemonError("--dir \(dir): not empty, and not a directory that an earlier spoolship demo made; give a new or an empty directory")
        }
    }

    /// The working directory: `dir` (new, empty, or an earlier demo's, emptied) or a fresh
    /// temporary one.
    public static func prepare(dir: String?) throws -> String {
        let fm = FileManager.default
        let root: String
        if let dir = dir {
            root = URL(fileURLWithPath: dir).standardizedFileURL.path
            if fm.fileExists(atPath: root) {
                try check(dir: root)
                for e in try fm.contentsOfDirectory(atPath: root) { try fm.removeItem(atPath: "\(root)/\(e)") }
            } else {
                try fm.createDirectory(atPath: root, withIntermediateDirectories: true)
            }
        } else {
            var template = Array((NSTemporaryDirectory() + "spoolship-demo-XXXXXX").utf8CString)
            guard let made = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!).map { String(cString: $0) } }) else {
                throw DaemonError("cannot make a temporary directory in \(NSTemporaryDirectory()): \(String(cString: strerror(errno)))")
            }
            root = made
        }
        guard fm.createFile(atPath: "\(root)/\(marker)", contents: Data("made by spoolship demo; its next run may empty this directory\n".utf8)) else {
            throw DaemonError("cannot write in \(root)")
        }
        return root
    }

    public func go() throws {
        started = monotonicNow()
        let fm = FileManager.default
        let bin = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().deletingLastPathComponent()
        for exe in ["spoolship-collector", "spoolship-agent"] where !fm.isExecutableFile(atPath: bin.appendingPathComponent(exe).path) {
            throw DaemonError("\(exe) is not in \(bin.path): the demo runs the collector and the agent found beside spoolship (bash scripts/demo.sh builds all three)")
        }
        for d in [inbox, logs, "\(root)/originals", data, "\(root)/state"] {
            try fm.createDirectory(atPath: d, withIntermediateDirectories: true)
        }
        // An empty config file of the demo's own: /etc/spoolship/*.toml must never matter.
        guard fm.createFile(atPath: "\(root)/empty.toml", contents: Data()) else { throw DaemonError("cannot write \(root)/empty.toml") }
        out.line("spoolship demo in \(root)")

        // Control sockets of the demo's own (never a real daemon's in /run/spoolship), unless
        // the directory's path is too long for a socket's.
        func socket(_ name: String) -> String {
            let path = "\(root)/\(name).sock"
            return path.utf8.count < 100 ? path : "none"
        }
        let c = try DemoDaemon("collector", executable: bin.appendingPathComponent("spoolship-collector"), arguments: [
            "--config", "\(root)/empty.toml", "--listen", "127.0.0.1:0", "--data-dir", data, "--port-file", "\(root)/port", "--log-level", "error",
            "--control-socket", socket("collector"),
        ], out: out)
        collector = c
        var port: String?
        let portDeadline = monotonicNow() + 30
        while port == nil {
            if let s = try? String(contentsOfFile: "\(root)/port", encoding: .utf8), !s.isEmpty {
                port = s.trimmingCharacters(in: .whitespacesAndNewlines)
            } else if !c.isRunning {
                throw DaemonError("the collector did not start (\(c.ending))")
            } else if demoInterrupted != 0 {
                throw DaemonError("interrupted by \(demoInterrupted == SIGINT ? "SIGINT" : "SIGTERM")")
            } else if monotonicNow() >= portDeadline {
                throw DaemonError("the collector wrote no port file within 30 s")
            } else {
                usleep(20_000)
            }
        }
        out.line("  collector  listening on 127.0.0.1:\(port!), data dir data/")
        agent = try DemoDaemon("agent", executable: bin.appendingPathComponent("spoolship-agent"), arguments: [
            "--config", "\(root)/empty.toml", "--collector", "127.0.0.1:\(port!)", "--agent-id", Self.agentID, "--state-dir", "\(root)/state",
            "--spool", "inbox=\(inbox)", "--logs", "logs=\(logs)", "--rotate-age", "1", "--log-level", "warning",
            "--control-socket", socket("agent"),
        ], out: out)
        out.line("  agent      \(Self.agentID), a daemon: blob spool inbox/, log spool logs/ (app.log rotated after 1 s)")
        if socket("agent") != "none" {
            out.line("  watch it   spoolship status --socket \(socket("agent")) --socket \(socket("collector"))")
        }
        let rate = 20 * 20  // see writeLog: 20 records every 50 ms
        out.line(String(format: "  producers  %d blobs (0 B to 4 MiB) into inbox/, and %d log records/s into logs/app.log, for %g s",
                        DemoProducers.blobSizes.count, rate, seconds))
        out.line("")
        out.line("Segments as the collector commits them (age: from written to committed; for a log")
        out.line("segment, from its first record, which waited a second for the rotation):")
        out.line("    time  spool  segment                      size  age")

        let shared = self.shared
        producing = true
        let (inbox, logs, originals, seconds) = (self.inbox, self.logs, "\(root)/originals", self.seconds)
        startThread("demo-blobs") { DemoProducers.dropBlobs(inbox: inbox, originals: originals, seconds: seconds * 0.75, shared: shared) }
        startThread("demo-log") { DemoProducers.writeLog(path: "\(logs)/app.log", copy: "\(originals)/app.log", seconds: seconds, shared: shared) }

        // Live: what the collector commits, until the producers are done.
        while !shared.withLock({ $0.blobsDone && $0.logDone }) {
            try poll()
            usleep(useconds_t(Self.pollInterval * 1_000_000))
        }
        let produced = shared.withLock { $0 }
        if let e = produced.error { throw DaemonError(e) }
        let blobBytes = produced.blobs.reduce(0) { $0 + $1.bytes.count }
        out.line("  \(clock())  producers done: \(produced.blobs.count) blobs (\(demoSize(blobBytes))), \(produced.recordTimes.count - 1) records (\(demoSize(produced.log.count))); waiting for the rest")

        // The rest: the last rotation comes a second after the last record.
        let drainDeadline = monotonicNow() + Self.drainTimeout
        while true {
            try poll()
            let missing = whatIsMissing(produced)
            if missing.isEmpty { break }
            if monotonicNow() >= drainDeadline {
                throw DaemonError("after \(Int(Self.drainTimeout)) s, not everything had arrived: \(missing.joined(separator: "; "))")
            }
            usleep(useconds_t(Self.pollInterval * 1_000_000))
        }
        out.clearStatus()
        out.line("  \(clock())  everything arrived; stopping the agent and the collector with SIGTERM")
        for d in [agent!, collector!] {
            guard d.stop(timeout: Self.stopTimeout) else { throw DaemonError("the \(d.name) did not stop within \(Int(Self.stopTimeout)) s of SIGTERM") }
            guard d.exitedCleanly else { throw DaemonError("the \(d.name) stopped after SIGTERM with \(d.ending)") }
        }
        out.line("  \(clock())  both stopped, exit 0")
        try check(produced)
    }

    /// Looks at the collector's data dir once: prints each segment committed since the last
    /// look, and checks that the daemons and the producers are still well.
    public func poll() throws {
        for spool in ["inbox", "logs"] {
            let dir = "\(collected)/\(spool)"
            guard let names = try? FileManager.default.contentsOfDirectory(atPath: dir) else { continue }
            for name in names.sorted() where !name.hasPrefix(".") && !seen.contains("\(spool)/\(name)") {
                let now = monotonicNow()
                seen.insert("\(spool)/\(name)")
                let size = (try? FileManager.default.attributesOfItem(atPath: "\(dir)/\(name)")[.size] as? Int) ?? 0
                committed.append(Committed(spool: spool, name: name, size: size))
                var age = "     ?"
                var extra = ""
                if spool == "inbox" {
                    if let b = shared.withLock({ $0.blobs.first { $0.name == name } }) { age = String(format: "%4.2f s", now - b.droppedAt) }
                } else if let d = FileManager.default.contents(atPath: "\(dir)/\(name)"), let r = DemoProducers.recordRange(d) {
                    let times = shared.withLock { $0.recordTimes }
                    if r.first < times.count { age = String(format: "%4.2f s", now - times[r.first]) }
                    extra = "  records \(r.first)-\(r.last)"
                }
                out.line("  \(clock(now))  \(pad(spool, 5))  \(pad(name, 22)) \(pad(demoSize(size), 10, left: true))  \(age)\(extra)")
            }
        }
        let blobs = committed.filter { $0.spool == "inbox" }
        let segs = committed.filter { $0.spool == "logs" }
        let (written, records) = shared.withLock { ($0.blobs.count, $0.recordTimes.count - 1) }
        out.setStatus("  \(clock())  so far: \(blobs.count)/\(written) blobs, \(segs.count) log segment\(segs.count == 1 ? "" : "s") committed; \(records) records written")
        // First: a Ctrl-C on a terminal stops the daemons too.
        if demoInterrupted != 0 { throw DaemonError("interrupted by \(demoInterrupted == SIGINT ? "SIGINT" : "SIGTERM")") }
        for d in [collector, agent].compactMap({ $0 }) where !d.isRunning {
            throw DaemonError("the \(d.name) stopped during the demo (\(d.ending))")
        }
        if let e = shared.withLock({ $0.error }) { throw DaemonError(e) }
    }

    /// What has not arrived yet, or is still in the spools; empty when everything is done.
    public func whatIsMissing(_ produced: DemoProduced) -> [String] {
        var missing: [String] = []
        let blobs = Set(committed.filter { $0.spool == "inbox" }.map(\.name))
        let notYet = produced.blobs.map(\.name).filter { !blobs.contains($0) }
        if !notYet.isEmpty { missing.append("blob(s) not committed: \(notYet.joined(separator: ", "))") }
        let logBytes = committed.filter { $0.spool == "logs" }.reduce(0) { $0 + $1.size }
        if logBytes < produced.log.count { missing.append("\(logBytes) of the \(produced.log.count) log bytes committed") }
        let left = spoolLeftovers()
        if !left.isEmpty { missing.append("still in the spools: \(left.joined(separator: ", "))") }
        return missing
    }

    /// Files left in the spools: blobs not yet removed, the active log file, rotated files.
    public func spoolLeftovers() -> [String] {
        let fm = FileManager.default
        var left = ((try? fm.contentsOfDirectory(atPath: inbox)) ?? []).map { "inbox/\($0)" }
        left += ((try? fm.contentsOfDirectory(atPath: logs)) ?? []).filter { $0 != ".spoolship" }.map { "logs/\($0)" }
        left += ((try? fm.contentsOfDirectory(atPath: "\(logs)/.spoolship")) ?? []).map { "logs/.spoolship/\($0)" }
        return left.sorted()
    }

    /// The end-to-end checks, once both daemons have stopped.
    public func check(_ produced: DemoProduced) throws {
        let fm = FileManager.default
        var failures: [String] = []
        out.line("")
        out.line("Checks:")

        // Every blob, byte for byte.
        var identical = 0
        for b in produced.blobs {
            guard let d = fm.contents(atPath: "\(collected)/inbox/\(b.name)") else {
                failures.append("blob \(b.name) is not at the collector")
                continue
            }
            if d.count == b.bytes.count && d.elementsEqual(b.bytes) { identical += 1 } else {
                failures.append("blob \(b.name) at the collector (\(d.count) bytes) differs from the \(b.bytes.count) bytes written")
            }
        }
        let names = Set(produced.blobs.map(\.name))
        let strays = ((try? fm.contentsOfDirectory(atPath: "\(collected)/inbox")) ?? []).filter { !names.contains($0) }.sorted()
        if !strays.isEmpty { failures.append("unexpected file(s) in data/\(Self.agentID)/inbox/: \(strays.joined(separator: ", "))") }
        out.line("  blobs       \(identical)/\(produced.blobs.count) byte-identical under data/\(Self.agentID)/inbox/")

        // The log stream: the segments in name order are exactly the bytes written.
        let all = ((try? fm.contentsOfDirectory(atPath: "\(collected)/logs")) ?? []).sorted()
        let segments = all.filter(Self.isSegmentName)
        let others = all.filter { !Self.isSegmentName($0) }
        if !others.isEmpty { failures.append("unexpected file(s) in data/\(Self.agentID)/logs/: \(others.joined(separator: ", "))") }
        var stream = Data()
        for s in segments {
            guard let d = fm.contents(atPath: "\(collected)/logs/\(s)") else {
                failures.append("cannot read data/\(Self.agentID)/logs/\(s)")
                continue
            }
            stream.append(d)
        }
        let records = produced.recordTimes.count - 1
        if stream == produced.log {
            out.line("  log stream  \(segments.count) segments of app.log, in name order, are exactly the \(records) records written (\(produced.log.count) bytes): none lost, none twice")
        } else {
            let common = zip(stream, produced.log).prefix { $0 == $1 }.count
            let record = produced.log.prefix(common).reduce(1) { $1 == 10 ? $0 + 1 : $0 }
            let what = "the \(segments.count) segments of app.log hold \(stream.count) bytes, the demo wrote \(produced.log.count); they first differ at byte \(common) (record \(record))"
            out.line("  log stream  DIFFERS: \(what)")
            failures.append("log stream: \(what)")
        }
        if segments.count < 2 { failures.append("log stream: \(segments.count) segment(s): app.log was not rotated while it was written") }

        // The collector's ledger, as `spoolship verify` checks it.
        let report = try Verifier.verify(dataDir: data)
        let problems = report.corrupt + report.missing + report.unknown + report.damaged
        out.line("  verify      \(report.checked) segments, \(report.bytes) bytes match the collector's ledger; \(problems.count) problem\(problems.count == 1 ? "" : "s")")
        for p in problems { out.line("                \(p)") }
        let expected = produced.blobs.count + segments.count
        if !report.ok {
            failures.append("verify: \(problems.count) problem(s): \(problems.joined(separator: "; "))")
        } else if report.checked != expected {
            failures.append("verify: the collector's ledger holds \(report.checked) segments, \(expected) were committed")
        }

        // Nothing left behind on the agent's side.
        let left = spoolLeftovers()
        if left.isEmpty {
            out.line("  spools      empty: the agent removed each file only after the collector acknowledged its commit")
        } else {
            out.line("  spools      NOT EMPTY: \(left.joined(separator: ", "))")
            failures.append("files left in the spools: \(left.joined(separator: ", "))")
        }

        guard failures.isEmpty else { throw DaemonError(failures.joined(separator: "\n  ")) }
        let blobBytes = produced.blobs.reduce(0) { $0 + $1.bytes.count }
        out.line("")
        out.line("\(produced.blobs.count) blobs (\(demoSize(blobBytes))) and \(records) log records (\(demoSize(produced.log.count))) shipped in \(produced.blobs.count + segments.count) segments; \(String(format: "%.1f", monotonicNow() - started)) s in all")
        out.line("demo passed")
    }

    /// Seconds since the start, as `  3.2s`.
    public func clock(_ now: Double = monotonicNow()) -> String { pad(String(format: "%.1fs", now - started), 6, left: true) }

    /// `s` padded with spaces to `width` (on the left when `left`).
    public func pad(_ s: String, _ width: Int, left: Bool = false) -> String {
        let fill = String(repeating: " ", count: max(0, width - s.count))
        return left ? fill + s : s + fill
    }

    /// `app.log.<SEQ>`: a log segment's name as the collector commits it (no compression here).
    public static func isSegmentName(_ n: String) -> Bool {
        let prefix = "app.log."
        guard n.hasPrefix(prefix) else { return false }
        let seq = n.dropFirst(prefix.count)
        return seq.count == 10 && seq.allSatisfy { $0.isASCII && $0.isNumber }
    }

    /// The way out after a failure: producers stopped, daemons killed.
    public func shutdown() {
        shared.withLock { $0.stop = true }
        let deadline = monotonicNow() + 5
        while producing && !shared.withLock({ $0.blobsDone && $0.logDone }) && monotonicNow() < deadline { usleep(10_000) }
        agent?.kill()
        collector?.kill()
    }
}
