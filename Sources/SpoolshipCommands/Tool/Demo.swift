import ArgumentParser
import Foundation
import Glibc
import SpoolshipDaemon
import SpoolshipDemo

struct Demo: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run a collector and an agent on 127.0.0.1, ship blobs and a rotating log stream live, and check everything.",
        discussion: """
            Starts a collector and an agent (as a daemon) in a temporary directory, drops blobs into a \
            blob spool and appends records to a log file that the agent rotates every second, prints each \
            segment as the collector commits it, then stops the producers, waits for the rest, stops both \
            daemons with SIGTERM, and checks: every blob byte-identical, the log stream's segments in name \
            order exactly the bytes written, the collector's ledger (as `spoolship verify`), the spools \
            empty. Exits 0 after "demo passed", 1 with what failed otherwise.
            """)

    @Option(help: "Keep the demo's files here (a new or empty directory, or one an earlier demo made: its contents are replaced) instead of a temporary directory.")
    var dir: String?

    @Option(help: "How long the producers run, in seconds (1 to 600).")
    var seconds: Double = 8

    func validate() throws {
        guard seconds.isFinite, seconds >= 1, seconds <= 600 else {
            throw ValidationError("--seconds must be from 1 to 600, not \(seconds)")
        }
        if let dir = dir {
            do { try DemoRun.check(dir: dir) } catch let e as DaemonError { throw ValidationError(e.description) }
        }
    }

    func run() throws {
        demoHandleSignals()
        let root = try DemoRun.prepare(dir: dir)
        let run = DemoRun(root: root, seconds: seconds)
        do {
            try run.go()
        } catch {
            run.out.clearStatus()
            run.shutdown()
            DemoOutput.write("spoolship demo: FAILED: \(error)\n", fd: STDERR_FILENO)
            DemoOutput.write("spoolship demo: its files are kept in \(root)\n", fd: STDERR_FILENO)
            throw ExitCode(1)
        }
        if dir == nil { try? FileManager.default.removeItem(atPath: root) }
    }
}
