import Foundation
import Glibc

/// Debian's logrotate (/usr/sbin/logrotate), run by a test beside the agent with a config and
/// a state file of the test's own, forced (`-f`) at the moments the test picks.
struct Logrotate {
    enum Mode: String, CaseIterable, CustomStringConvertible, Sendable {
        /// Rename and create (logrotate's default).
        case create
        /// Rename and create, gzip the file of the rotation before (so a never-reopening
        /// producer's file is deleted at its second rotation, still open).
        case delaycompress
        /// Copy, then truncate in place.
        case copytruncate

        var directives: String {
            switch self {
            case .create: return "create"
            case .delaycompress: return "create\n    compress\n    delaycompress"
            case .copytruncate: return "copytruncate"
            }
        }

        var description: String { rawValue }
    }

    let config: URL
    let state: URL
    let log: URL

    /// A config for `file`: keep 3 rotations, in `mode`. logrotate ignores a config that
    /// others may write to, and a directory that they may write to: both are 0644 / 0755.
    init(cluster: Cluster, file: URL, mode: Mode) throws {
        config = cluster.root.appendingPathComponent("logrotate.conf")
        state = cluster.root.appendingPathComponent("logrotate.state")
        log = cluster.root.appendingPathComponent("logrotate.out")
        let text = """
            \(file.path) {
                rotate 3
                missingok
                \(mode.directives)
            }

            """
        try Data(text.utf8).write(to: config)
        guard chmod(config.path, 0o644) == 0, chmod(file.deletingLastPathComponent().path, 0o755) == 0 else {
            throw TestFailure("chmod for logrotate failed: errno \(errno)")
        }
    }

    /// Rotates now (`logrotate -f`); throws with what logrotate said unless it rotated cleanly.
    func run() throws {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/sbin/logrotate")
        p.arguments = ["-f", "-v", "-s", state.path, config.path]
        let out = Pipe()
        p.standardOutput = out
        p.standardError = out
        try p.run()
        let text = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        // It exits 0 after "Ignoring" a config it does not trust: that is a failure here. One
        // complaint is expected: gzip finds the file of a producer that never reopens growing
        // while it compresses it (delaycompress), which is the case under test.
        let expected = "gzip: stdin: file size changed while zipping"
        let errors = text.split(separator: "\n").filter { $0.contains("error:") }
        let unexpected = errors.filter { !$0.contains("Compressing program wrote following message") }
        let gzipLines = text.split(separator: "\n").filter { $0.hasPrefix("gzip:") }
        guard p.terminationStatus == 0 || !errors.isEmpty && unexpected.isEmpty, !text.contains("Ignoring"), unexpected.isEmpty,
              gzipLines.allSatisfy({ $0 == expected }) else {
            throw TestFailure("logrotate failed (\(p.terminationStatus)):\n\(text)")
        }
    }
}
