import Foundation
import Glibc

/// A collector and agents started from the built binaries, in one temporary directory; used
/// by the one test that made it (not Sendable).
final class Cluster {
    let root: URL
    var dataDir: URL { root.appendingPathComponent("data") }
    private(set) var collector: Daemon?
    private var proxies: [FaultProxy] = []
    private(set) var port: UInt16 = 0
    var collectorArgs: [String] = []
    private var logs = 0

    init(_ name: String) throws {
        root = try Harness.tempDir(name)
        _ = FileManager.default.createFile(atPath: emptyConfig.path, contents: Data())
    }

    /// Given to every daemon the cluster starts (a later --config overrides it), so that a
    /// host's /etc/spoolship/*.toml never leaks into a test.
    var emptyConfig: URL { root.appendingPathComponent("empty.toml") }

    func spool(_ name: String = "spool") throws -> URL {
        let u = root.appendingPathComponent(name)
        try FileManager.default.createDirectory(at: u, withIntermediateDirectories: true)
        return u
    }

    /// Originals of the files a test puts in its spools, kept for comparison.
    func payload(_ name: String = "originals") throws -> Payload {
        try Payload(originals: root.appendingPathComponent(name))
    }

    /// A fault proxy in front of the running collector, stopped by `remove()`.
    func startProxy() throws -> FaultProxy {
        let p = try FaultProxy(targetPort: port)
        proxies.append(p)
        return p
    }

    func nextLog(_ what: String) -> URL {
        logs += 1
        return root.appendingPathComponent("\(what)-\(logs).log")
    }

    /// Starts the collector (on `port` if given: a restart keeps its address) and waits for it
    /// to report its port.
    @discardableResult
    /// `under` runs it under another program (e.g. strace with its options), which gets the
    /// collector's path and arguments after its own.
    func startCollector(port fixed: UInt16? = nil, extra: [String] = [], env: [String: String] = [:], under: [String] = []) throws -> UInt16 {
        let portFile = root.appendingPathComponent("collector.port")
        try? FileManager.default.removeItem(at: portFile)
        let args = ["--config", emptyConfig.path, "--listen", "127.0.0.1:\(fixed ?? 0)", "--data-dir", dataDir.path, "--port-file", portFile.path,
                    "--control-socket", collectorSocket.path] + collectorArgs + extra
        let d = try Self.launch("spoolship-collector", args, under: under, log: nextLog("collector"), env: env)
        collector = d
        guard let p = Harness.readPortFile(portFile, timeout: 30) else {
            throw TestFailure("collector did not start: \(d.output)")
        }
        port = p
        return p
    }

    /// The control sockets of the daemons the cluster starts (each its own, so that tests never
    /// meet in /run/spoolship): the collector's, and each agent's by its state dir.
    var collectorSocket: URL { root.appendingPathComponent("collector.sock") }
    func agentSocket(state: String = "state") -> URL { root.appendingPathComponent("\(state).sock") }

    func agentArgs(id: String = "agent-1", state: String = "state", spools: [(String, URL)], target: UInt16? = nil, extra: [String] = []) -> [String] {
        var a = ["--config", emptyConfig.path, "--collector", "127.0.0.1:\(target ?? port)", "--agent-id", id,
                 "--state-dir", root.appendingPathComponent(state).path, "--control-socket", agentSocket(state: state).path]
        for (n, u) in spools { a += ["--spool", "\(n)=\(u.path)"] }
        return a + extra
    }

    func startAgent(_ args: [String], env: [String: String] = [:], under: [String] = []) throws -> Daemon {
        try Self.launch("spoolship-agent", args, under: under, log: nextLog("agent"), env: env)
    }

    static func launch(_ exe: String, _ args: [String], under: [String], log: URL, env: [String: String]) throws -> Daemon {
        guard let wrapper = under.first else { return try Daemon(exe, args, log: log, env: env) }
        return try Daemon(wrapper, Array(under.dropFirst()) + [Harness.binDir.appendingPathComponent(exe).path] + args, log: log, env: env)
    }

    /// Runs an agent with --once to the end; returns its exit status and output.
    func runOnce(_ args: [String], timeout: Double = 300, env: [String: String] = [:], under: [String] = []) throws -> (Int32?, String) {
        let d = try startAgent(args + ["--once"], env: env, under: under)
        let status = d.wait(timeout: timeout)
        if status == nil { d.stop() }
        return (status, d.output)
    }

    func committed(agent: String = "agent-1", spool: String = "spool") -> URL {
        dataDir.appendingPathComponent(agent).appendingPathComponent(spool)
    }

    /// The payload's files that are gone from `spool` and not committed: acknowledged and
    /// deleted, yet lost. Empty at every moment while the durability rules hold.
    func vanished(_ p: Payload, from spool: URL, agent: String = "agent-1", spoolName: String = "spool") -> [String] {
        let left = Set(Harness.files(in: spool)), there = Set(Harness.files(in: committed(agent: agent, spool: spoolName)))
        return p.names.filter { !left.contains($0) && !there.contains($0) }
    }

    /// Waits up to `timeout` seconds for `spool` to empty, checking at every poll that nothing
    /// left it without being committed; returns whether it emptied, and what vanished.
    func waitForSpoolToEmpty(_ spool: URL, _ p: Payload, timeout: Double) -> (emptied: Bool, lost: [String]) {
        var lost: [String] = []
        let emptied = Harness.waitUntil(timeout: timeout) {
            for n in vanished(p, from: spool) where !lost.contains(n) { lost.append(n) }
            return Harness.files(in: spool).isEmpty
        }
        return (emptied, lost)
    }

    func partials(agent: String = "agent-1") -> [String] {
        Harness.files(in: dataDir.appendingPathComponent(".spoolship/partial/\(agent)"))
    }

    /// Builds the LD_PRELOAD shim Tests/FaultShim/NAME.c with cc; returns the library's path.
    func buildShim(_ name: String) throws -> String {
        let lib = root.appendingPathComponent("\(name).so").path
        let source = PackagingTests.repo.appendingPathComponent("Tests/FaultShim/\(name).c").path
        guard Process.run("cc", ["-shared", "-fPIC", "-O2", "-o", lib, source, "-ldl"]) == 0 else {
            throw TestFailure("cc could not build the shim \(source)")
        }
        return lib
    }

    func remove() {
        for p in proxies { p.stop() }
        collector?.stop()
        // SPOOLSHIP_KEEP_TEST_DIRS=1 keeps the daemons' logs and data for a look after a failure.
        if ProcessInfo.processInfo.environment["SPOOLSHIP_KEEP_TEST_DIRS"] == nil { try? FileManager.default.removeItem(at: root) }
    }
}

struct TestFailure: Error, CustomStringConvertible {
    var description: String
    init(_ d: String) { description = d }
}

/// Files written into a source dir and kept as originals for comparison.
struct Payload {
    var names: [String] = []
    var sizes: [String: Int] = [:]
    let originals: URL

    init(originals: URL) throws {
        self.originals = originals
        try FileManager.default.createDirectory(at: originals, withIntermediateDirectories: true)
    }

    /// Writes a file into `spool` the way producers should: a dotfile renamed into place.
    mutating func add(_ name: String, size: Int, seed: UInt64, into spool: URL) throws {
        let orig = originals.appendingPathComponent(name)
        try Harness.writeRandomFile(orig, size: size, seed: seed)
        let tmp = spool.appendingPathComponent(".\(name).part")
        try? FileManager.default.removeItem(at: tmp)
        try Harness.copyFile(orig, to: tmp)
        guard rename(tmp.path, spool.appendingPathComponent(name).path) == 0 else { throw TestFailure("rename failed") }
        names.append(name)
        sizes[name] = size
    }

    var totalBytes: Int { sizes.values.reduce(0, +) }

    /// The names in `dir` that are byte-identical to their originals.
    func identical(in dir: URL) throws -> [String] {
        try names.filter { n in
            let u = dir.appendingPathComponent(n)
            return try FileManager.default.fileExists(atPath: u.path) && Harness.sameContents(originals.appendingPathComponent(n), u)
        }
    }
}

/// Resident set size of a process in bytes (from /proc/PID/status).
func residentBytes(_ pid: Int32) -> Int? {
    guard let s = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return nil }
    for line in s.split(separator: "\n") where line.hasPrefix("VmRSS:") {
        let kb = line.split(separator: " ").compactMap { Int($0) }.first
        return kb.map { $0 * 1024 }
    }
    return nil
}

func openDescriptors(_ pid: Int32) -> Int {
    (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd").count) ?? -1
}
