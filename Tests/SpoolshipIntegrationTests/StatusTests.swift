import Foundation
import Glibc
import Testing

/// `spoolship status` against real daemons over their control sockets: in the middle of a
/// transfer (held there by a fault proxy that stops forwarding) and after it; the JSON parses
/// and its numbers are what the test shipped; the socket is owner-only, a stale one does not
/// stop a restart, a bad client does not hurt the daemon, and no daemon is a clear error.
@Suite(.serialized) struct StatusTests {
    struct Run {
        var status: Int32
        var stdout: String
        var stderr: String
    }

    /// Runs `spoolship ARGS` to its end; stdout and stderr apart.
    static func spoolship(_ args: [String], timeout: Double = 30) throws -> Run {
        let p = Process()
        p.executableURL = Harness.binDir.appendingPathComponent("spoolship")
        p.arguments = args
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        p.standardInput = FileHandle.nullDevice
        try p.run()
        // Read while it runs: an answer larger than a pipe's buffer must not block it.
        let o = Locked(Data()), e = Locked(Data())
        let group = DispatchGroup()
        DispatchQueue.global().async(group: group) { o.value = out.fileHandleForReading.readDataToEndOfFile() }
        DispatchQueue.global().async(group: group) { e.value = err.fileHandleForReading.readDataToEndOfFile() }
        guard Harness.waitUntil(timeout: timeout, { !p.isRunning }) else {
            p.terminate()
            throw TestFailure("spoolship \(args.joined(separator: " ")) did not finish in \(timeout) s")
        }
        _ = group.wait(timeout: .now() + 5)
        return Run(status: p.terminationStatus, stdout: String(decoding: o.value, as: UTF8.self), stderr: String(decoding: e.value, as: UTF8.self))
    }

    /// `spoolship status --socket PATH --json`, parsed.
    static func json(_ socket: URL) throws -> [String: Any] {
        let r = try spoolship(["status", "--socket", socket.path, "--json"])
        guard r.status == 0 else { throw TestFailure("status --json failed (\(r.status)): \(r.stderr)") }
        guard let doc = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any] else {
            throw TestFailure("not a JSON object: \(r.stdout)")
        }
        return doc
    }

    static func int(_ d: [String: Any], _ path: String) -> Int? {
        var cur: Any? = d
        for k in path.split(separator: ".") { cur = (cur as? [String: Any])?[String(k)] }
        return (cur as? NSNumber)?.intValue
    }

    static func string(_ d: [String: Any], _ path: String) -> String? {
        var cur: Any? = d
        for k in path.split(separator: ".") { cur = (cur as? [String: Any])?[String(k)] }
        return cur as? String
    }

    /// Waits until something listens at `path` (the control socket comes up just after the
    /// port file is written).
    static func waitForListener(_ path: String, timeout: Double = 30) -> Bool {
        Harness.waitUntil(timeout: timeout) { (try? UnixClient(path)) != nil }
    }

    @Test func midTransferAndAfter_statusAndJSONAgreeWithWhatWasShipped() throws {
        let c = try Cluster("status-flow")
        defer { c.remove() }
        try c.startCollector()
        let proxy = try c.startProxy()
        let spool = try c.spool()
        var p = try c.payload()
        let small = [100_000, 200_000, 300_000]
        let smallBytes = small.reduce(0, +)
        let big = 16 << 20
        // The first connection stops forwarding (both ways) once the small files and about
        // 4 MiB of the big one have passed; later connections run clean.
        proxy.setFault(.blackholeAfter(bytes: smallBytes + (4 << 20)), connections: 1)
        let agent = try c.startAgent(c.agentArgs(spools: [("spool", spool)], target: proxy.port))
        defer { agent.stop() }
        for (i, size) in small.enumerated() { try p.add("small-\(i).bin", size: size, seed: UInt64(70 + i), into: spool) }
        // Phase 1: the small files are acknowledged (gone from the spool).
        #expect(Harness.waitUntil(timeout: 60) { Harness.files(in: spool).isEmpty && Harness.files(in: c.committed()).count == 3 }, "\(agent.output)")
        try p.add("big.bin", size: big, seed: 99, into: spool)
        // Held mid-transfer: the proxy has stopped, and the collector holds part of the big
        // segment in a partial file.
        #expect(Harness.waitUntil(timeout: 60) { proxy.bytesFromClient >= smallBytes + (4 << 20) }, "\(agent.output)")
        var mid: [String: Any] = [:]
        #expect(Self.waitForListener(c.collectorSocket.path) && Self.waitForListener(c.agentSocket().path))
        #expect(try Harness.waitUntil(timeout: 30) {
            mid = try Self.json(c.collectorSocket)
            return Self.int(mid, "totals.partials") == 1 && (Self.int(mid, "totals.received_bytes") ?? 0) > smallBytes + (1 << 20)
        }, "collector status mid-transfer: \(mid)")
        #expect(Self.string(mid, "daemon") == "collector")
        #expect(Self.int(mid, "version") == 1)
        #expect(Self.int(mid, "totals.committed_segments") == 3)
        #expect(Self.int(mid, "totals.committed_bytes") == smallBytes)
        #expect((Self.int(mid, "totals.received_bytes") ?? 0) <= smallBytes + big)
        let agents = mid["agents"] as? [[String: Any]] ?? []
        #expect(agents.count == 1, "\(mid)")
        if let a = agents.first {
            #expect(a["agent_id"] as? String == "agent-1")
            #expect((a["address"] as? String)?.hasPrefix("127.0.0.1:") == true)
            #expect(Self.int(a, "segments_committed") == 3)
            #expect(Self.int(a, "bytes_committed") == smallBytes)
            #expect(Self.int(a, "offers_open") == 1)
            #expect(Self.int(a, "partials") == 1)
            #expect((Self.int(a, "bytes_in") ?? 0) > smallBytes)
        }
        #expect((Self.int(mid, "disk.free_bytes") ?? 0) > 0)
        #expect(Self.int(mid, "disk.reserve_bytes") == 256 << 20)

        let agentSocket = c.agentSocket()
        let am = try Self.json(agentSocket)
        #expect(Self.string(am, "daemon") == "agent")
        #expect(Self.string(am, "agent_id") == "agent-1")
        #expect(Self.string(am, "connection.state") == "connected", "\(am)")
        #expect(Self.int(am, "totals.pending_segments") == 1, "\(am)")
        #expect(Self.int(am, "totals.pending_bytes") == big)
        #expect(Self.int(am, "totals.shipped_segments") == 3)
        #expect(Self.int(am, "totals.shipped_bytes") == smallBytes)
        #expect(((am["totals"] as? [String: Any])?["oldest_pending_age_seconds"] as? NSNumber)?.doubleValue ?? -1 >= 0, "\(am)")
        let spools = am["spools"] as? [[String: Any]] ?? []
        #expect(spools.count == 1 && spools.first?["name"] as? String == "spool" && spools.first?["kind"] as? String == "blobs")
        #expect(spools.first.flatMap { Self.int($0, "pending_segments") } == 1)

        // The human views say the same, in words.
        let human = try Self.spoolship(["status", "--socket", agentSocket.path, "--socket", c.collectorSocket.path])
        #expect(human.status == 0, "\(human.stderr)")
        #expect(human.stdout.contains("agent agent-1 (pid \(agent.pid)"), "\(human.stdout)")
        #expect(human.stdout.contains("connected to"), "\(human.stdout)")
        #expect(human.stdout.contains("pending: 1 segment, 16.0 MiB, oldest"), "\(human.stdout)")
        #expect(human.stdout.contains("shipped since start: 3 segments, 585.9 KiB"), "\(human.stdout)")
        #expect(human.stdout.contains("collector "), "\(human.stdout)")
        #expect(human.stdout.contains("agents connected: 1"), "\(human.stdout)")
        #expect(human.stdout.contains("since start: 3 segments, 585.9 KiB committed"), "\(human.stdout)")

        // Released: the cut connection is replaced, the big segment resumes and commits.
        proxy.resetAll()
        let finished = try Harness.waitUntil(timeout: 120) { try Harness.files(in: spool).isEmpty && p.identical(in: c.committed()).count == 4 }
        #expect(finished, "\(agent.output)")
        var after: [String: Any] = [:]
        #expect(try Harness.waitUntil(timeout: 30) {
            after = try Self.json(agentSocket)
            return Self.int(after, "totals.shipped_segments") == 4
        }, "\(after)")
        #expect(Self.int(after, "totals.pending_segments") == 0)
        #expect(Self.int(after, "totals.pending_bytes") == 0)
        #expect((after["totals"] as? [String: Any])?["oldest_pending_age_seconds"] == nil)
        #expect(Self.int(after, "totals.shipped_bytes") == smallBytes + big)
        #expect((Self.int(after, "totals.sent_bytes") ?? 0) >= smallBytes + big)
        #expect((Self.int(after, "totals.reconnects") ?? 0) >= 1, "\(after)")
        #expect((Self.int(after, "totals.resumes") ?? 0) >= 1, "\(after)")
        #expect((Self.int(after, "errors.connection") ?? 0) >= 1, "\(after)")
        let col = try Self.json(c.collectorSocket)
        #expect(Self.int(col, "totals.committed_segments") == 4)
        #expect(Self.int(col, "totals.committed_bytes") == smallBytes + big)
        // What landed in the partial before the cut was kept and counted once.
        #expect(Self.int(col, "totals.received_bytes") == smallBytes + big, "\(col)")
        #expect(Self.int(col, "totals.partials") == 0)
        #expect((Self.int(col, "totals.resumes") ?? 0) >= 1)
        #expect(Self.int(col, "totals.resumed_bytes") == Self.int(after, "totals.resumed_bytes"), "the bytes the collector kept are those the agent did not send again")
        #expect((Self.int(col, "totals.resumed_bytes") ?? 0) > 0)
        let done = try Self.spoolship(["status", "--socket", agentSocket.path])
        #expect(done.stdout.contains("pending: nothing"), "\(done.stdout)")
        #expect(done.stdout.contains("shipped since start: 4 segments, 16.6 MiB"), "\(done.stdout)")
    }

    @Test func collectorGone_agentSaysStuck_withItsLastError_andTheDeadCollectorIsNamed() throws {
        let c = try Cluster("status-stuck")
        defer { c.remove() }
        try c.startCollector()
        let spool = try c.spool()
        let agent = try c.startAgent(c.agentArgs(spools: [("spool", spool)]))
        defer { agent.stop() }
        var p = try c.payload()
        try p.add("first.bin", size: 1000, seed: 1, into: spool)
        // Committed, and its acknowledgement reached the agent (it removed the file): killed
        // any earlier, the collector may leave first.bin pending too, which is legitimate.
        #expect(Harness.waitUntil(timeout: 60) {
            Harness.files(in: c.committed()).contains("first.bin") && !Harness.files(in: spool).contains("first.bin")
        }, "\(agent.output)")
        c.collector!.kill(SIGKILL)
        _ = c.collector!.wait(timeout: 30)
        try p.add("waiting.bin", size: 5000, seed: 2, into: spool)
        var doc: [String: Any] = [:]
        let stuck = try Harness.waitUntil(timeout: 60) {
            doc = try Self.json(c.agentSocket())
            return Self.string(doc, "connection.state") == "disconnected" && Self.int(doc, "totals.pending_segments") == 1
                && Self.string(doc, "connection.last_error") != nil
        }
        #expect(stuck, "\(doc)")
        #expect(Self.string(doc, "connection.last_error")?.contains("127.0.0.1:\(c.port)") == true, "\(doc)")
        #expect((Self.int(doc, "errors.connection") ?? 0) + (Self.int(doc, "errors.connect") ?? 0) >= 1, "\(doc)")
        // Both asked: the agent's view says what is stuck; the collector's socket is named
        // as dead, and the exit status is 1.
        let r = try Self.spoolship(["status", "--socket", c.agentSocket().path, "--socket", c.collectorSocket.path])
        #expect(r.status == 1)
        #expect(r.stdout.contains("collector 127.0.0.1:\(c.port): NOT CONNECTED"), "\(r.stdout)")
        #expect(r.stdout.contains("last error "), "\(r.stdout)")
        #expect(r.stdout.contains("STUCK: 1 segment (4.9 KiB) wait and the agent is not connected to 127.0.0.1:\(c.port)"), "\(r.stdout)")
        #expect(r.stderr == "spoolship status: nothing answers at \(c.collectorSocket.path): connection refused (the socket file is left from a daemon that is not running)\n", "\(r.stderr)")
    }

    @Test func logSpool_aRotatedFileItsWriterHolds_isShownToSeal_thenShips() throws {
        let c = try Cluster("status-logs")
        defer { c.remove() }
        try c.startCollector()
        let logs = try c.spool("logs")
        let file = logs.appendingPathComponent("app.log")
        _ = FileManager.default.createFile(atPath: file.path, contents: nil)
        // The test is the producer: it keeps the file open for writing after the rotation.
        let writer = try FileHandle(forWritingTo: file)
        writer.write(Data(repeating: 65, count: 10_000))
        let agent = try c.startAgent(c.agentArgs(spools: []) + ["--logs", "app=\(logs.path)", "--rotate-age", "0.5"])
        defer { agent.stop() }
        #expect(Self.waitForListener(c.agentSocket().path), "\(agent.output)")
        func spool(_ d: [String: Any]) -> [String: Any] { (d["spools"] as? [[String: Any]])?.first ?? [:] }
        var doc: [String: Any] = [:]
        let held = try Harness.waitUntil(timeout: 60) {
            doc = try Self.json(c.agentSocket())
            return Self.int(spool(doc), "rotated_to_seal") == 1
        }
        #expect(held, "\(doc)\n\(agent.output)")
        #expect(spool(doc)["kind"] as? String == "logs" && spool(doc)["name"] as? String == "app")
        #expect(Self.int(spool(doc), "pending_segments") == 0, "not sealed while its writer holds it")
        let view = try Self.spoolship(["status", "--socket", c.agentSocket().path])
        #expect(view.stdout.contains("1 rotated file to seal"), "\(view.stdout)")
        try writer.close()
        let shipped = try Harness.waitUntil(timeout: 60) {
            doc = try Self.json(c.agentSocket())
            return Self.int(spool(doc), "shipped_segments") == 1 && Self.int(spool(doc), "rotated_to_seal") == 0
        }
        #expect(shipped, "\(doc)\n\(agent.output)")
        #expect(Self.int(spool(doc), "shipped_bytes") == 10_000)
        #expect(Self.int(spool(doc), "pending_segments") == 0)
    }

    @Test func controlSocket_isOwnerOnly_survivesBadClients_andAStaleOneDoesNotStopARestart() throws {
        let c = try Cluster("status-socket")
        defer { c.remove() }
        // A directory that does not exist yet: the collector makes it, owner-only.
        let sock = c.root.appendingPathComponent("run/collector.sock")
        try c.startCollector(extra: ["--control-socket", sock.path])
        #expect(Self.waitForListener(sock.path), "\(c.collector!.output)")
        var st = stat()
        #expect(stat(sock.path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFSOCK)
        #expect(st.st_mode & 0o777 == 0o600, "socket mode \(String(st.st_mode & 0o777, radix: 8))")
        #expect(stat(sock.deletingLastPathComponent().path, &st) == 0 && st.st_mode & 0o777 == 0o700)

        // Bad clients: one that says nothing, one that sends too much, one that asks for
        // something else. Each gets an answer or is dropped; the daemon goes on.
        let silent = try UnixClient(sock.path)
        let flood = try UnixClient(sock.path)
        try flood.send([UInt8](repeating: UInt8(ascii: "x"), count: 10_000))
        let odd = try UnixClient(sock.path)
        try odd.send(Array("launch missiles\n".utf8))
        let floodAnswer = flood.readAll(timeout: 10)
        #expect(floodAnswer.contains("longer than 256 bytes"), "\(floodAnswer)")
        let oddAnswer = odd.readAll(timeout: 10)
        #expect(oddAnswer.contains("unknown request 'launch missiles'"), "\(oddAnswer)")
        silent.close()
        let ok = try Self.spoolship(["status", "--socket", sock.path, "--json"])
        #expect(ok.status == 0, "\(ok.stderr)")
        #expect(c.collector!.isRunning)

        // Killed: the socket file stays, nothing answers there, and the tool says so.
        c.collector!.kill(SIGKILL)
        _ = c.collector!.wait(timeout: 30)
        #expect(lstat(sock.path, &st) == 0, "a killed daemon leaves its socket file")
        let stale = try Self.spoolship(["status", "--socket", sock.path])
        #expect(stale.status == 1)
        #expect(stale.stderr.contains("nothing answers at \(sock.path): connection refused"), "\(stale.stderr)")
        // Restarted on the same path: it takes the socket over.
        try c.startCollector(port: c.port, extra: ["--control-socket", sock.path])
        #expect(Self.waitForListener(sock.path), "\(c.collector!.output)")
        let again = try Self.spoolship(["status", "--socket", sock.path])
        #expect(again.status == 0, "\(again.stderr)\n\(c.collector!.output)")
        #expect(again.stdout.contains("collector "), "\(again.stdout)")
        // A second daemon given the same path is refused, and names it.
        let second = try Daemon("spoolship-collector", ["--config", c.emptyConfig.path, "--listen", "127.0.0.1:0",
                                                        "--data-dir", c.root.appendingPathComponent("data2").path, "--control-socket", sock.path],
                                log: c.nextLog("second"))
        #expect(second.wait(timeout: 30) == 1)
        #expect(second.output.contains("control socket \(sock.path) belongs to another running daemon"), "\(second.output)")
        // A graceful stop removes the socket.
        c.collector!.kill(SIGTERM)
        #expect(c.collector!.wait(timeout: 30) == 0)
        #expect(lstat(sock.path, &st) != 0, "the socket file is removed at a clean stop")
    }

    @Test func anotherUser_cannotAsk_theSocketItselfIsOwnerOnly() throws {
        let c = try Cluster("status-perm")
        defer { c.remove() }
        // A directory anyone may search, so that only the socket's own mode keeps others out.
        let open = try Harness.tempDir("status-perm-open")
        defer { Harness.remove(open) }
        #expect(chmod(open.path, 0o755) == 0)
        let sock = open.appendingPathComponent("collector.sock")
        try c.startCollector(extra: ["--control-socket", sock.path])
        #expect(Self.waitForListener(sock.path), "\(c.collector!.output)")
        // The tool, runnable by nobody (the build dir may not be).
        let tool = open.appendingPathComponent("spoolship")
        try FileManager.default.copyItem(at: Harness.binDir.appendingPathComponent("spoolship"), to: tool)
        #expect(chmod(tool.path, 0o755) == 0)
        func asNobody(_ args: [String]) throws -> (Int32?, String) {
            let d = try Daemon("/usr/bin/setpriv", ["--reuid=65534", "--regid=65534", "--clear-groups", tool.path] + args, log: c.nextLog("nobody"))
            return (d.wait(timeout: 30), d.output)
        }
        // The tool must run as nobody at all (the Swift runtime readable by others), or what
        // follows would prove nothing: that is a failure here, not a skip.
        let (helpStatus, help) = try asNobody(["--help"])
        try #require(helpStatus == 0, "the tool does not run as nobody on this host: \(help.prefix(200))")
        let (status, out) = try asNobody(["status", "--socket", sock.path])
        #expect(status == 1)
        #expect(out == "spoolship status: cannot ask \(sock.path): permission denied (the control socket is owner-only: run this as the daemon's user or as root)\n", "\(out)")
        let mine = try Self.spoolship(["status", "--socket", sock.path])
        #expect(mine.status == 0, "its owner asks it: \(mine.stderr)")
    }

    @Test func noDaemon_isAClearErrorNamingThePath_andExitOne() throws {
        let dir = try Harness.tempDir("status-none")
        defer { Harness.remove(dir) }
        let path = dir.appendingPathComponent("agent.sock").path
        let r = try Self.spoolship(["status", "--socket", path])
        #expect(r.status == 1)
        #expect(r.stdout.isEmpty)
        #expect(r.stderr == "spoolship status: nothing answers at \(path): no such socket (is the daemon running, with this --control-socket?)\n", "\(r.stderr)")
        // A regular file where the socket should be.
        _ = FileManager.default.createFile(atPath: path, contents: Data("x".utf8))
        let f = try Self.spoolship(["status", "--socket", path, "--json"])
        #expect(f.status == 1)
        #expect(f.stderr.contains(path), "\(f.stderr)")
    }
}

/// A raw client of a control socket, for sending what the tool never would.
final class UnixClient {
    private(set) var fd: Int32

    init(_ path: String) throws {
        fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue | SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw Harness.Failure.errno("socket", path) }
        var a = sockaddr_un()
        a.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        withUnsafeMutableBytes(of: &a.sun_path) { p in
            for (i, b) in bytes.enumerated() { p[i] = b }
            p[bytes.count] = 0
        }
        let rc = withUnsafePointer(to: &a) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard rc == 0 else { let e = errno; Glibc.close(fd); throw Harness.Failure.errno("connect", path, e) }
    }

    /// Sends what it can (the daemon may close early: that is not a failure here).
    func send(_ bytes: [UInt8]) throws {
        var done = 0
        while done < bytes.count {
            let n = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress! + done, bytes.count - done, Int32(MSG_NOSIGNAL)) }
            if n <= 0 { return }
            done += n
        }
    }

    /// Everything until the daemon closes, or `timeout` seconds.
    func readAll(timeout: Double) -> String {
        var out: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 4096)
        let deadline = Harness.monotonicNow() + timeout
        while Harness.monotonicNow() < deadline {
            var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            if poll(&pfd, 1, 100) <= 0 { continue }
            let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress!, 4096, 0) }
            if n <= 0 { break }
            out += buf[0..<n]
        }
        return String(decoding: out, as: UTF8.self)
    }

    func close() { if fd >= 0 { Glibc.close(fd); fd = -1 } }
    deinit { close() }
}
