import Foundation
import Glibc
import Testing

/// `spoolship demo`, as the README's first command runs it: a collector and an agent on
/// 127.0.0.1, blobs and a rotating log stream, shown arriving, then checked.
@Suite(.serialized) struct DemoTests {
    @Test func demo_runsToTheEnd_andSaysWhatItChecked() throws {
        let root = try Harness.tempDir("demo")
        defer { Harness.remove(root) }
        let dir = root.appendingPathComponent("d")
        let demo = try Daemon("spoolship", ["demo", "--dir", dir.path], log: root.appendingPathComponent("demo.log"))
        defer { demo.stop() }
        #expect(demo.wait(timeout: 180) == 0, "\(demo.output)")
        let out = demo.output
        // What it says it checked.
        #expect(out.contains("blobs       12/12 byte-identical under data/demo-host/inbox/"), "\(out)")
        #expect(out.contains("are exactly the") && out.contains("none lost, none twice"), "\(out)")
        #expect(out.contains("match the collector's ledger; 0 problems"), "\(out)")
        #expect(out.contains("spools      empty"), "\(out)")
        #expect(out.hasSuffix("demo passed\n"), "\(out)")
        // Shown arriving: a line for a blob and for a log segment, as each was committed.
        #expect(out.contains("inbox  blob-01.bin"), "\(out)")
        #expect(out.contains("logs   app.log.0000000001"), "\(out)")
        // Piped, there is no terminal status line.
        #expect(!out.contains("\r") && !out.contains("\u{1B}"))

        // And it is true: checked here on its own, from the files the demo kept.
        let originals = dir.appendingPathComponent("originals")
        let committed = dir.appendingPathComponent("data/demo-host")
        let blobs = Harness.files(in: originals).filter { $0.hasPrefix("blob-") }
        #expect(blobs.count == 12)
        #expect(Harness.files(in: committed.appendingPathComponent("inbox")) == blobs)
        for b in blobs {
            #expect(try Harness.sameContents(originals.appendingPathComponent(b), committed.appendingPathComponent("inbox/\(b)")), "\(b)")
        }
        let written = try Data(contentsOf: originals.appendingPathComponent("app.log"))
        let (stream, segments) = try LogStreamCheck.contents(in: committed.appendingPathComponent("logs"), stream: "app.log")
        #expect(Harness.files(in: committed.appendingPathComponent("logs")) == segments, "nothing but the stream's segments")
        #expect(segments.count >= 2, "app.log was rotated while it was written: \(segments)")
        #expect(!written.isEmpty && stream == written, "the segments in name order are the bytes written")
        let records = written.reduce(0) { $1 == 10 ? $0 + 1 : $0 }
        #expect(out.contains("exactly the \(records) records written (\(written.count) bytes)"), "\(out)")
        #expect(Harness.files(in: dir.appendingPathComponent("inbox")).isEmpty)
        #expect(Harness.files(in: dir.appendingPathComponent("logs")).isEmpty)
        #expect(Harness.files(in: dir.appendingPathComponent("logs/.spoolship")).isEmpty)
    }

    /// On a terminal (a pseudo-terminal from util-linux script(1)), a status line under the
    /// segment lines, erased before each of them; the demo passes all the same.
    @Test func demo_onATerminal_drawsAStatusLine() throws {
        let root = try Harness.tempDir("demo-pty")
        defer { Harness.remove(root) }
        let cmd = "\(Harness.binDir.appendingPathComponent("spoolship").path) demo --seconds 2 --dir \(root.appendingPathComponent("d").path)"
        let s = try Daemon("/usr/bin/script", ["-qec", cmd, "/dev/null"], log: root.appendingPathComponent("pty.log"))
        defer { s.stop() }
        #expect(s.wait(timeout: 180) == 0, "\(s.output)")
        #expect(s.output.contains("so far: "), "\(s.output)")
        #expect(s.output.contains("\r\u{1B}[K    "), "the status line is erased before a line")
        #expect(s.output.contains("demo passed"), "\(s.output)")
    }

    /// A daemon that dies during the demo fails it, with a message that names it.
    @Test func demo_fails_whenTheCollectorDies() throws {
        let root = try Harness.tempDir("demo-fail")
        defer { Harness.remove(root) }
        let dir = root.appendingPathComponent("d")
        let demo = try Daemon("spoolship", ["demo", "--dir", dir.path], log: root.appendingPathComponent("demo.log"))
        defer { demo.stop() }
        // The collector: the process whose command line names the demo's data dir.
        var collector: Int32?
        #expect(Harness.waitUntil(timeout: 60) {
            collector = processes(withArgument: dir.appendingPathComponent("data").path).first
            return collector != nil || !demo.isRunning
        })
        let pid = try #require(collector, "no collector found: \(demo.output)")
        #expect(Harness.waitUntil(timeout: 60) { demo.output.contains("  inbox  blob-01.bin") || !demo.isRunning })
        kill(pid, SIGKILL)
        #expect(demo.wait(timeout: 60) == 1, "\(demo.output)")
        #expect(demo.output.contains("spoolship demo: FAILED: the collector stopped during the demo (killed by signal 9)"), "\(demo.output)")
        #expect(demo.output.contains("its files are kept in \(dir.path)"), "\(demo.output)")
        #expect(!demo.output.contains("demo passed"))
        #expect(processes(withArgument: dir.appendingPathComponent("state").path).isEmpty, "the agent is not left running")
    }

    @Test func demo_refusesADirItDidNotMake_andBadSeconds() throws {
        let root = try Harness.tempDir("demo-dir")
        defer { Harness.remove(root) }
        let precious = root.appendingPathComponent("precious")
        try Data("keep me".utf8).write(to: precious)
        let refused = try Daemon("spoolship", ["demo", "--dir", root.path], log: root.appendingPathComponent("refused.log"))
        #expect(refused.wait(timeout: 60) == 64)
        #expect(refused.output.contains("--dir \(root.path): not empty, and not a directory that an earlier spoolship demo made"), "\(refused.output)")
        #expect(FileManager.default.fileExists(atPath: precious.path), "nothing removed")
        let file = try Daemon("spoolship", ["demo", "--dir", precious.path], log: root.appendingPathComponent("file.log"))
        #expect(file.wait(timeout: 60) == 64)
        #expect(file.output.contains("exists and is not a directory"), "\(file.output)")
        let seconds = try Daemon("spoolship", ["demo", "--seconds", "0"], log: root.appendingPathComponent("seconds.log"))
        #expect(seconds.wait(timeout: 60) == 64)
        #expect(seconds.output.contains("--seconds must be from 1 to 600"), "\(seconds.output)")
    }
}

/// Pids of the processes that have `argument` among their command-line arguments.
func processes(withArgument argument: String) -> [Int32] {
    let names = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
    return names.compactMap { Int32($0) }.filter { pid in
        guard let d = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline") else { return false }
        return d.split(separator: 0).contains { String(decoding: $0, as: UTF8.self) == argument }
    }
}
