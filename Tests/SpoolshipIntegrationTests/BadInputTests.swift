import Foundation
import Glibc
import SpoolshipCore
import SpoolshipIO
import Testing

/// A crafted client: speaks raw bytes to the collector and reads what comes back.
final class RawClient {
    let socket: Socket
    private var decoder = FrameDecoder(expectPreamble: true)

    init(port: UInt16) throws {
        socket = try Socket.connect(Endpoint(host: "127.0.0.1", port: port), timeout: 5)
        socket.setTimeouts(receive: 10, send: 10)
    }

    func send(_ bytes: [UInt8]) throws { try socket.sendAll(bytes) }
    func send(_ frames: [Frame], preamble: Bool = false) throws {
        var w = FrameWriter()
        for f in frames { w.append(f) }
        try send((preamble ? Wire.preamble : []) + w.bytes)
    }

    func hello(_ id: String = "crafted") throws -> Welcome {
        try send([.hello(Hello(agentID: id))], preamble: true)
        let frames = try readUntilClosed(stopAfter: 1)
        guard case .welcome(let w)? = frames.first else { throw TestFailure("no welcome: \(frames)") }
        return w
    }

    /// Reads frames until the collector closes the connection (or `stopAfter` frames came).
    func readUntilClosed(stopAfter: Int = .max) throws -> [Frame] {
        var out: [Frame] = []
        while out.count < stopAfter {
            while out.count < stopAfter, let f = try decoder.next() { out.append(f) }
            if out.count >= stopAfter { break }
            guard let b = try? socket.receive(max: 65536), !b.isEmpty else { break }
            decoder.feed(b)
        }
        return out
    }

    /// Sends `frames` after a good hello and returns the ERROR the collector answered with,
    /// after checking that it then closed the connection.
    func expectRefusal(_ after: () throws -> Void) throws -> (ErrorCode?, String) {
        try after()
        let frames = try readUntilClosed()
        for f in frames {
            if case .error(let code, _, let message) = f { return (ErrorCode(rawValue: code), message) }
        }
        return (nil, "no error frame in \(frames)")
    }
}

/// Rows 13-16 of RELIABILITY.md, and the bad input of issue 2: each refused with a clear
/// error, nothing written outside the partial area, and the collector keeps serving.
@Suite(.serialized) struct BadInputTests {
    /// Every file under `dir`, relative, recursively.
    func allFiles(_ dir: URL) -> Set<String> {
        var out: Set<String> = []
        if let e = FileManager.default.enumerator(atPath: dir.path) {
            while let f = e.nextObject() as? String { out.insert(f) }
        }
        return out
    }

    func realAgentShips(_ c: Cluster, tag: String) throws {
        let spool = try c.spool("real-\(tag)")
        var p = try c.payload("orig-\(tag)")
        try p.add("good-\(tag)", size: 100_000, seed: 9, into: spool)
        let (status, out) = try c.runOnce(c.agentArgs(id: "real", state: "state-\(tag)", spools: [("spool", spool)]), timeout: 60)
        #expect(status == 0, "real agent after \(tag): \(out)")
        #expect(try p.identical(in: c.committed(agent: "real")).count == 1)
    }

    @Test func hostileInput_isRefusedWithANamedError_andWritesNothing() throws {
        let c = try Cluster("bad-input")
        defer { c.remove() }
        c.collectorArgs = ["--max-segment-size", "\(1 << 20)", "--max-frame-body", "8K"]
        let port = try c.startCollector()
        let outside = c.root.appendingPathComponent("outside")
        try FileManager.default.createDirectory(at: outside, withIntermediateDirectories: true)
        try realAgentShips(c, tag: "first")
        let pid = c.collector!.pid
        let rssBefore = residentBytes(pid) ?? 0
        let before = allFiles(c.dataDir).filter { !$0.hasPrefix(".spoolship") }

        var tried: [String: Int] = [:]
        func check(_ what: String, _ expected: ErrorCode, contains: String, _ body: (RawClient) throws -> Void) throws {
            let client = try RawClient(port: port)
            let (code, message) = try client.expectRefusal { try body(client) }
            #expect(code == expected, "\(what): got \(String(describing: code)) \(message)")
            #expect(message.contains(contains), "\(what): message '\(message)' should name '\(contains)'")
            tried[what, default: 0] += 1
        }

        // Not spoolship at all.
        try check("HTTP request", .protocolViolation, contains: "HTTP") { try $0.send(Array("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n".utf8)) }
        try check("TLS client hello", .protocolViolation, contains: "TLS") { try $0.send([0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc]) }
        // Absurd lengths, before and after the hello.
        for n: UInt32 in [UInt32.max, 1 << 31, 65537, 8193] {  // 8193: one past --max-frame-body
            let len: [UInt8] = [UInt8(n >> 24), UInt8(n >> 16 & 0xff), UInt8(n >> 8 & 0xff), UInt8(n & 0xff)]
            try check("length \(n) in hello", .tooLarge, contains: "exceeds the maximum") { try $0.send(Wire.preamble + len + [FrameType.hello.rawValue]) }
            try check("length \(n) after hello", .tooLarge, contains: "exceeds the maximum") { c in _ = try c.hello(); try c.send(len + [FrameType.offer.rawValue]) }
        }
        try check("unknown version", .unsupportedVersion, contains: "version 9") { try $0.send([.hello(Hello(version: 9, agentID: "x"))], preamble: true) }
        try check("malformed frame", .protocolViolation, contains: "offer frame ends inside") { c in _ = try c.hello(); try c.send([0, 0, 0, 3, FrameType.offer.rawValue, 1, 2, 3]) }
        try check("unknown frame type", .protocolViolation, contains: "unknown frame type") { c in _ = try c.hello(); try c.send([0, 0, 0, 0, 0x55]) }
        try check("frame out of place", .protocolViolation, contains: "unexpected") { c in _ = try c.hello(); try c.send([.welcome(Welcome(collectorID: "x", maxFrameBody: 1, maxSegmentSize: 1, window: 1))]) }
        try check("hostile agent id", .badName, contains: "agent id contains '/'") { try $0.send([.hello(Hello(agentID: "../../etc"))], preamble: true) }
        // Hostile segment names.
        let hostile = ["../x", "/etc/passwd", "a/../../b", "a\0b", "..", ".", "bell\u{7}", ".spoolship", String(repeating: "n", count: 4096)]
        for name in hostile {
            try check("segment name \(name.prefix(20).debugDescription)", .badName, contains: "segment name") { c in
                _ = try c.hello()
                try c.send([.offer(Offer(tag: 1, kind: .blob, key: SegmentKey(spool: "s", name: name, size: 1, crc: 0)))])
            }
        }
        try check("hostile spool", .badName, contains: "spool name") { c in
            _ = try c.hello()
            try c.send([.offer(Offer(tag: 1, kind: .blob, key: SegmentKey(spool: "..", name: "x", size: 1, crc: 0)))])
        }
        try check("size beyond the maximum", .tooLarge, contains: "more than the maximum") { c in
            _ = try c.hello()
            try c.send([.offer(Offer(tag: 1, kind: .blob, key: SegmentKey(spool: "s", name: "x", size: 1 << 63, crc: 0)))])
        }
        try check("DATA without an offer", .protocolViolation, contains: "not an open offer") { c in
            _ = try c.hello()
            try c.send([.data(tag: 77, offset: 0, length: 10)])
        }
        try check("DATA at the wrong offset", .protocolViolation, contains: "expected 0") { c in
            _ = try c.hello()
            try c.send([.offer(Offer(tag: 1, kind: .blob, key: SegmentKey(spool: "s", name: "y", size: 10, crc: 0)))])
            try c.send([.data(tag: 1, offset: 5, length: 5)])
        }
        try check("DATA past the size", .protocolViolation, contains: "runs past its size") { c in
            _ = try c.hello()
            try c.send([.offer(Offer(tag: 1, kind: .blob, key: SegmentKey(spool: "s", name: "z", size: 10, crc: 0)))])
            try c.send([.data(tag: 1, offset: 0, length: 11)])
        }

        // Nothing new outside the private area: no agent dir, spool dir or file was made.
        let after = allFiles(c.dataDir).filter { !$0.hasPrefix(".spoolship") }
        #expect(after == before, "new paths: \(after.subtracting(before))")
        #expect(allFiles(outside).isEmpty)
        let rssAfter = residentBytes(pid) ?? 0
        print("bad input: \(tried.values.reduce(0, +)) hostile connections; collector RSS \(rssBefore / 1024) KiB -> \(rssAfter / 1024) KiB")
        #expect(rssAfter - rssBefore < 16 << 20, "collector memory grows less than 16 MiB")
        #expect(c.collector!.isRunning)
        try realAgentShips(c, tag: "after")
    }

    @Test func checksumMismatch_isDiscarded_andNothingIsCommitted() throws {
        let c = try Cluster("bad-checksum")
        defer { c.remove() }
        let port = try c.startCollector()
        let client = try RawClient(port: port)
        _ = try client.hello("liar")
        let payload: [UInt8] = Array("hello world".utf8)
        let key = SegmentKey(spool: "s", name: "claimed.txt", size: UInt64(payload.count), crc: CRC32.of(payload) ^ 1)
        try client.send([.offer(Offer(tag: 1, kind: .blob, key: key))])
        try client.send([.data(tag: 1, offset: 0, length: UInt64(payload.count))])
        try client.send(payload)
        var frames: [Frame] = []
        let got = try Harness.waitUntil(timeout: 10) {
            frames += try client.readUntilClosed(stopAfter: 1)
            return frames.contains { if case .error = $0 { return true }; return false }
        }
        #expect(got, "\(frames)")
        #expect(frames.contains { if case .error(let code, 1, let m) = $0 { return code == ErrorCode.checksumMismatch.rawValue && m.contains("checksum mismatch") }; return false })
        #expect(Harness.files(in: c.committed(agent: "liar", spool: "s")).isEmpty)
        #expect(c.partials(agent: "liar").isEmpty, "the bad partial was discarded")
    }

    /// Also with openat2 refused (strace answers it with ENOSYS, as systemd's seccomp filter
    /// does under the packaged units): the per-component route refuses the symlink too.
    @Test(arguments: [false, true]) func plantedSymlink_isNotFollowed(withoutOpenat2: Bool) throws {
        let c = try Cluster("bad-symlink")
        defer { c.remove() }
        try c.startCollector(under: withoutOpenat2 ? NoOpenat2DaemonTests.noOpenat2 : [])
        let outside = c.root.appendingPathComponent("outside")
        try FileManager.default.createDirectory(at: outside, withIntermediateDirectories: true)
        // Someone planted the agent's spool directory as a symlink to elsewhere.
        let agentDir = c.dataDir.appendingPathComponent("agent-1")
        try FileManager.default.createDirectory(at: agentDir, withIntermediateDirectories: true)
        try FileManager.default.createSymbolicLink(at: agentDir.appendingPathComponent("spool"), withDestinationURL: outside)
        let spool = try c.spool()
        var p = try c.payload()
        try p.add("x", size: 1000, seed: 1, into: spool)
        let (status, out) = try c.runOnce(c.agentArgs(spools: [("spool", spool)], extra: ["--timeout", "3"]), timeout: 60)
        #expect(status == 1, "the agent cannot deliver while the symlink is there")
        #expect(Harness.files(in: outside).isEmpty, "nothing written through the symlink")
        #expect(Harness.files(in: spool) == ["x"], "nothing lost")
        #expect(c.collector!.output.contains(withoutOpenat2 ? "openat(" : "openat2("), "the collector names the refused call:\n\(c.collector!.output)")
        _ = out
    }
}

/// Row 16 of RELIABILITY.md: connections that say nothing, or one byte a second, are dropped
/// at the handshake deadline (a deadline for the whole handshake, not for each read), and a
/// real agent ships meanwhile; the collector's descriptors come back down.
@Suite(.serialized) struct SlowPeerTests {
    @Test func silentAndTricklingConnections_areDroppedAtTheDeadline_whileARealAgentShips() throws {
        let c = try Cluster("slow-peers")
        defer { c.remove() }
        // Row 16: 1,000 silent connections against a limit of 500: half are reset at once,
        // the rest dropped at the deadline; descriptors stay bounded by the limit.
        try c.startCollector(extra: ["--handshake-timeout", "2", "--max-connections", "500"])
        guard let collector = c.collector else { throw TestFailure("no collector") }
        let baseline = openDescriptors(collector.pid)
        let started = Harness.monotonicNow()
        // One byte a second: a valid preamble and HELLO, trickled (connected first, so that
        // it holds one of the 500 places).
        var hello = FrameWriter()
        hello.append(.hello(Hello(agentID: "slow")))
        let trickle = Wire.preamble + hello.bytes
        let trickler = try Socket.connect(Endpoint(host: "127.0.0.1", port: c.port), timeout: 5)
        var silent: [Socket] = []
        // Past the limit the collector resets a connection as soon as it accepts it; on a busy
        // machine that reset can come before connect(2)'s own check of the socket, and then it
        // is connect that reports it: reset at once all the same.
        var resetAtConnect = 0
        for _ in 0..<1000 {
            do {
                silent.append(try Socket.connect(Endpoint(host: "127.0.0.1", port: c.port), timeout: 5))
            } catch let e as SyscallError where e.errno == ECONNRESET {
                resetAtConnect += 1
            }
        }
        // The trickler holds one of the 500 places: 501 of the 1,000 are past the limit.
        #expect(resetAtConnect <= 501, "only connections past the limit of 500 are reset")
        var peakDescriptors = openDescriptors(collector.pid)
        let droppedAt = Locked<Double?>(nil)  // set by the trickling thread
        func tricklerDropped() -> Double? { droppedAt.value }
        let t = Thread {
            // After the last byte, keep probing: a closed connection fails a send.
            for b in trickle + [UInt8](repeating: 0, count: 30) {
                do { try trickler.sendAll([b]) } catch { droppedAt.value = Harness.monotonicNow(); return }
                usleep(1_000_000)  // the byte rate is what is under test
            }
        }
        t.start()
        // A real agent ships while they hang on.
        let spool = try c.spool()
        var p = try c.payload()
        for i in 0..<20 { try p.add("f\(i)", size: 20_000, seed: UInt64(i), into: spool) }
        let agent = try c.startAgent(c.agentArgs(spools: [("spool", spool)]) + ["--once"])
        defer { agent.stop() }
        // Meanwhile: when each silent connection is closed or reset by the collector (it
        // becomes readable: EOF or an error), and the collector's descriptors.
        var fds = silent.map { pollfd(fd: $0.fd.raw, events: Int16(POLLIN), revents: 0) }
        var closedAt: [Double?] = Array(repeating: nil, count: silent.count)
        while (agent.isRunning || closedAt.contains(where: { $0 == nil })) && Harness.monotonicNow() - started < 60 {
            peakDescriptors = max(peakDescriptors, openDescriptors(collector.pid))
            _ = poll(&fds, nfds_t(fds.count), 20)  // also the loop's pace
            for i in fds.indices where fds[i].revents != 0 && closedAt[i] == nil {
                closedAt[i] = Harness.monotonicNow() - started
                fds[i].fd = -1  // poll ignores it from now on
            }
        }
        let status = agent.wait(timeout: 1), out = agent.output
        #expect(status == 0, "\(out)")
        #expect(try p.identical(in: c.committed()).count == 20, "left in the spool: \(Harness.files(in: spool))\n\(out)")
        // Every silent connection is closed by the collector, within twice the deadline.
        let stillOpen = closedAt.filter { $0 == nil }.count
        let closed = closedAt.compactMap { $0 }
        #expect(stillOpen == 0, "\(stillOpen) silent connection(s) still open")
        #expect(closed.allSatisfy { $0 < 2 * 2 }, "silent connections dropped within 2x the 2 s deadline: \(closed.max() ?? -1)")
        #expect(Harness.waitUntil(timeout: 40) { tricklerDropped() != nil }, "the one-byte-a-second client was dropped")
        if let at = tricklerDropped() {
            print("slow peers: 1000 silent (limit 500, peak \(peakDescriptors) collector descriptors) (\(closed.filter { $0 < 1 }.count + resetAtConnect) reset at once, \(resetAtConnect) of them during connect) dropped by \(String(format: "%.1f", closed.max() ?? -1)) s, the trickler by \(String(format: "%.1f", at - started)) s (deadline 2 s)")
            // The collector closes at the 2 s deadline; the client's next sends then fail.
            #expect(at - started < 2 * 2 + 3, "the trickler was dropped at the deadline, not after its 20 bytes")
        }
        #expect(peakDescriptors <= baseline + 2 * 500 + 16, "descriptors bounded by --max-connections: peak \(peakDescriptors), baseline \(baseline)")
        #expect(collector.output.contains("too many connections; refusing"), "the connections past the limit were refused")
        // Back down: the connections' descriptors are gone; the real agent's store keeps a
        // few (its ledger and directory handles).
        #expect(Harness.waitUntil(timeout: 10) { openDescriptors(collector.pid) <= baseline + 8 }, "descriptors: \(baseline) at start, \(openDescriptors(collector.pid)) now")
        #expect(collector.output.contains("Connection timed out") || collector.output.contains("deadline passed"))
    }
}
