import ArgumentParser
import Foundation
import Glibc
import SpoolshipDaemon

struct Demo: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run a collector and an agent on 127.0.0.1, ship a few files, and check them.")

    @Option(help: "Keep the demo's files here instead of a temporary directory.")
    var dir: String?

    func run() throws {
        let exe = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().deletingLastPathComponent()
        let fm = FileManager.default
        let root = dir ?? (NSTemporaryDirectory() + "spoolship-demo-\(getpid())")
        try? fm.removeItem(atPath: root)
        for d in ["spool", "originals", "data", "state"] {
            try fm.createDirectory(atPath: "\(root)/\(d)", withIntermediateDirectories: true)
        }
        print("spoolship demo in \(root)")
        // A few files of different sizes, written as a producer would: to a .tmp name, then renamed.
        let sizes = [0, 1, 4096, 100_000, 1 << 20, 8 << 20]
        var total = 0
        for (i, size) in sizes.enumerated() {
            var bytes = [UInt8](repeating: 0, count: size)
            var x = UInt64(0x9E37_79B9_7F4A_7C15) &* UInt64(i + 1)
            for j in 0..<size { x ^= x << 13; x ^= x >> 7; x ^= x << 17; bytes[j] = UInt8(truncatingIfNeeded: x) }
            let name = "file-\(i)-\(size).bin"
            try Data(bytes).write(to: URL(fileURLWithPath: "\(root)/originals/\(name)"))
            try Data(bytes).write(to: URL(fileURLWithPath: "\(root)/spool/.\(name).tmp"))
            try fm.moveItem(atPath: "\(root)/spool/.\(name).tmp", toPath: "\(root)/spool/\(name)")
            total += size
        }
        print("  spool: \(sizes.count) files, \(total) bytes")

        let collector = Process()
        collector.executableURL = exe.appendingPathComponent("spoolship-collector")
        // An empty config file of its own: the demo must never pick up /etc/spoolship/*.toml.
        FileManager.default.createFile(atPath: "\(root)/empty.toml", contents: Data())
        collector.arguments = ["--config", "\(root)/empty.toml", "--listen", "127.0.0.1:0", "--data-dir", "\(root)/data", "--port-file", "\(root)/port", "--log-level", "error"]
        try collector.run()
        defer { if collector.isRunning { collector.terminate(); collector.waitUntilExit() } }
        var port: String?
        let deadline = Date(timeIntervalSinceNow: 30)
        while port == nil && Date() < deadline && collector.isRunning {
            if let s = try? String(contentsOfFile: "\(root)/port", encoding: .utf8), !s.isEmpty { port = s.trimmingCharacters(in: .whitespacesAndNewlines) }
            else { usleep(20_000) }
        }
        guard let p = port else { throw DaemonError("the collector did not start (see its messages above)") }
        print("  collector listening on 127.0.0.1:\(p)")

        let started = Date()
        let agent = Process()
        agent.executableURL = exe.appendingPathComponent("spoolship-agent")
        agent.arguments = ["--config", "\(root)/empty.toml", "--collector", "127.0.0.1:\(p)", "--agent-id", "demo-host", "--state-dir", "\(root)/state",
                           "--spool", "inbox=\(root)/spool", "--once", "--timeout", "60", "--log-level", "warning"]
        try agent.run()
        agent.waitUntilExit()
        let took = Date().timeIntervalSince(started)
        guard agent.terminationStatus == 0 else { throw DaemonError("the agent failed (exit \(agent.terminationStatus))") }
        print(String(format: "  agent shipped everything with --once in %.2f s", took))

        var identical = 0
        for (i, size) in sizes.enumerated() {
            let name = "file-\(i)-\(size).bin"
            let a = try Data(contentsOf: URL(fileURLWithPath: "\(root)/originals/\(name)"))
            let b = try? Data(contentsOf: URL(fileURLWithPath: "\(root)/data/demo-host/inbox/\(name)"))
            if a == b { identical += 1 } else { print("  MISMATCH \(name)") }
        }
        let left = try fm.contentsOfDirectory(atPath: "\(root)/spool").count
        let report = try Verifier.verify(dataDir: "\(root)/data")
        print("  collector: \(identical)/\(sizes.count) files byte-identical under data/demo-host/inbox/")
        print("  verify: \(report.checked) segments, \(report.bytes) bytes match the ledger; \(report.problems.count) problems")
        print("  agent spool now holds \(left) file(s): each was removed only after its commit was acknowledged")
        guard identical == sizes.count, left == 0, report.ok else { throw ExitCode(1) }
        print("demo passed")
        if dir == nil { try? fm.removeItem(atPath: root) }
    }
}
