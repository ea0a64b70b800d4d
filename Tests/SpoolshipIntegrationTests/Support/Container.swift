import Foundation
import Glibc

/// A Debian root booted with systemd-nspawn: systemd 252 as its PID 1, journald, the units as
/// a user's host runs them. The root (scripts/container-root.sh) is cached and stays untouched:
/// it is booted with --volatile=overlay, so that what the test installs and writes lives in a
/// tmpfs over it and goes with the container. It shares the host's network, so that a fault
/// proxy of the test on 127.0.0.1 can sit between the daemons inside.
final class Container: Sendable {
    let name: String
    let nspawn: Daemon
    /// The container's PID 1, as the host sees it.
    let leader: Int32

    /// --register=no and --keep-unit: no machined or system bus is needed on the host (which
    /// need not run systemd itself).
    /// Boots `root` with the given read-only binds (host path, path inside) and waits until
    /// systemd reports the system running (or degraded), at most `timeout` seconds.
    init(root: String, binds: [(String, String)], log: URL, timeout: Double = 90) throws {
        name = "spoolship-test-\(getpid())"
        var args = ["--quiet", "--directory", root, "--volatile=overlay", "--boot", "--register=no", "--keep-unit",
                    "--machine", name, "--console=read-only", "--link-journal=no"]
        for (host, inside) in binds { args.append("--bind-ro=\(host):\(inside)") }
        let nspawn = try Daemon("/usr/bin/systemd-nspawn", args, log: log, env: ["SYSTEMD_COLORS": "0"])
        self.nspawn = nspawn
        var leader: Int32 = 0
        let found = Harness.waitUntil(timeout: 30) {
            guard let pid = Self.child(of: nspawn.pid, named: "systemd") else { return !nspawn.isRunning }
            leader = pid
            return true
        }
        self.leader = leader
        guard found, leader > 0 else { throw TestFailure("systemd-nspawn did not start systemd:\n\(nspawn.output)") }
        var state = ""
        let up = Harness.waitUntil(timeout: timeout) {
            let (_, out) = (try? run(["systemctl", "is-system-running"])) ?? (1, "")
            state = out.trimmingCharacters(in: .whitespacesAndNewlines)
            return state == "running" || state == "degraded" || !nspawn.isRunning
        }
        guard up, nspawn.isRunning else { throw TestFailure("the container did not come up (state '\(state)'):\n\(nspawn.output)") }
    }

    /// The process whose parent is `parent` and whose command is `comm`, if any.
    static func child(of parent: Int32, named comm: String) -> Int32? {
        Daemon.children(of: parent).first { p in
            (try? String(contentsOfFile: "/proc/\(p)/comm", encoding: .utf8))?.trimmingCharacters(in: .newlines) == comm
        }
    }

    /// The container's file system as the host reaches it (through its PID 1's root).
    var fs: URL { URL(fileURLWithPath: "/proc/\(leader)/root") }
    func path(_ inside: String) -> URL { fs.appendingPathComponent(String(inside.drop { $0 == "/" })) }

    /// Runs a command inside (all of the container's namespaces, a clean environment); returns
    /// its status and its standard output and error together.
    @discardableResult
    func run(_ argv: [String], timeout: Double = 120) throws -> (Int32, String) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/nsenter")
        p.arguments = ["--target", "\(leader)", "--all", "--", "/usr/bin/env", "-i",
                       "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8",
                       "SYSTEMD_COLORS=0", "SYSTEMD_PAGER=", "SYSTEMD_LESS="] + argv
        var template = Array("/tmp/spoolship-nsenter-XXXXXX".utf8CString)
        let fd = template.withUnsafeMutableBufferPointer { mkstemp($0.baseAddress!) }
        guard fd >= 0 else { throw Harness.Failure.errno("mkstemp", "/tmp/spoolship-nsenter-XXXXXX") }
        Glibc.close(fd)
        let out = URL(fileURLWithPath: template.withUnsafeBufferPointer { String(cString: $0.baseAddress!) })
        defer { unlink(out.path) }
        let handle = try FileHandle(forWritingTo: out)
        p.standardInput = FileHandle.nullDevice
        p.standardOutput = handle
        p.standardError = handle
        try p.run()
        try? handle.close()
        if !Harness.waitUntil(timeout: timeout, { !p.isRunning }) {
            p.terminate()
            throw TestFailure("\(argv.joined(separator: " ")) did not finish within \(Int(timeout)) s inside the container")
        }
        let text = (try? String(contentsOf: out, encoding: .utf8)) ?? ""
        return (p.terminationStatus, text)
    }

    /// `sh -c script` inside.
    @discardableResult
    func sh(_ script: String, timeout: Double = 120) throws -> (Int32, String) {
        try run(["/bin/sh", "-c", script], timeout: timeout)
    }

    /// A unit's properties (systemctl show -p ...), by name.
    func show(_ unit: String, _ properties: [String]) throws -> [String: String] {
        let (_, out) = try run(["systemctl", "show", unit] + properties.flatMap { ["-p", $0] })
        var result: [String: String] = [:]
        for line in out.split(separator: "\n") {
            guard let eq = line.firstIndex(of: "=") else { continue }
            result[String(line[..<eq])] = String(line[line.index(after: eq)...])
        }
        return result
    }

    func property(_ unit: String, _ name: String) throws -> String { try show(unit, [name])[name] ?? "" }

    /// The journal of a unit, as the messages alone.
    func journal(_ unit: String) throws -> String {
        try run(["journalctl", "--no-pager", "-o", "cat", "-u", unit]).1
    }

    /// The journal entries of a unit with all their fields (journalctl -o json).
    func journalEntries(_ unit: String) throws -> [[String: Any]] {
        let (_, out) = try run(["journalctl", "--no-pager", "-o", "json", "-u", unit])
        return out.split(separator: "\n").compactMap {
            (try? JSONSerialization.jsonObject(with: Data($0.utf8))) as? [String: Any]
        }
    }

    /// Writes a file inside through the host's view of it (its directory made if missing).
    func write(_ inside: String, _ text: String) throws {
        try FileManager.default.createDirectory(at: path(inside).deletingLastPathComponent(), withIntermediateDirectories: true)
        try Data(text.utf8).write(to: path(inside))
    }

    /// Powers the container off (SIGTERM to nspawn asks systemd for a clean shutdown), then
    /// makes sure it is gone.
    func shutdown() {
        nspawn.kill(SIGTERM)
        if nspawn.wait(timeout: 30) == nil { nspawn.stop() }
    }

    deinit { shutdown() }
}
