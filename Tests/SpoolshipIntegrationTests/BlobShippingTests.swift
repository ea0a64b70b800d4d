import Foundation
import Glibc
import Testing

/// The blob path end to end, with the real binaries on 127.0.0.1.
@Suite(.serialized) struct BlobShippingTests {
    @Test func once_shipsEveryEdgeSize_andAHundredsOfSmallFiles_identicalAndOnce() throws {
        let c = try Cluster("blob-sizes")
        defer { c.remove() }
        try c.startCollector()
        let spool = try c.spool()
        var p = try c.payload()
        let seed = UInt64(Date().timeIntervalSince1970)
        print("blob sizes: seed \(seed)")
        for size in [0, 1, 4095, 4096, 4097, 1 << 20, 128 << 20] {
            try p.add("edge-\(size).bin", size: size, seed: seed &+ UInt64(size), into: spool)
        }
        var rng = Harness.SplitMix64(seed: seed)
        for i in 0..<300 {
            try p.add("small-\(i).dat", size: Int(rng.next() % 20_000), seed: seed &+ UInt64(1000 + i), into: spool)
        }
        let (status, out) = try c.runOnce(c.agentArgs(spools: [("spool", spool)]))
        #expect(status == 0, "agent output:\n\(out)")
        let dest = c.committed()
        #expect(try p.identical(in: dest).count == p.names.count)
        #expect(Harness.files(in: dest).count == p.names.count, "no extra or duplicate files")
        #expect(Harness.files(in: spool).isEmpty, "the agent removed every acknowledged file")
        #expect(c.partials().isEmpty, "no partial left behind")
    }

    @Test func daemon_shipsFilesAsTheyComplete_andRemovesThemOnlyAfterCommit() throws {
        let c = try Cluster("blob-daemon")
        defer { c.remove() }
        try c.startCollector()
        let spool = try c.spool()
        let agent = try c.startAgent(c.agentArgs(spools: [("spool", spool)]))
        defer { agent.stop() }
        var p = try c.payload()
        // In-progress files are ignored until renamed.
        try Harness.writeRandomFile(spool.appendingPathComponent(".hidden"), size: 100, seed: 1)
        try Harness.writeRandomFile(spool.appendingPathComponent("upload.tmp"), size: 100, seed: 2)
        // A file written in place, closed after writing.
        try Harness.writeRandomFile(spool.appendingPathComponent("direct.bin"), size: 300_000, seed: 3)
        try Harness.writeRandomFile(c.root.appendingPathComponent("originals-direct"), size: 300_000, seed: 3)
        for i in 0..<50 {
            try p.add("f\(i)", size: 10_000 + i, seed: UInt64(i), into: spool)
        }
        let dest = c.committed()
        var violation: String?
        let ok = try Harness.waitUntil(timeout: 60) {
            // Invariant, checked at every poll: a file gone from the spool is committed.
            let left = Set(Harness.files(in: spool))
            let there = Set(Harness.files(in: dest))
            for n in p.names where !left.contains(n) && !there.contains(n) { violation = "\(n) left the spool before it was committed" }
            return try p.identical(in: dest).count == p.names.count && there.contains("direct.bin")
                && left == [".hidden", "upload.tmp"]
        }
        #expect(violation == nil)
        #expect(ok, "agent output:\n\(agent.output)")
        #expect(try Harness.sameContents(dest.appendingPathComponent("direct.bin"), c.root.appendingPathComponent("originals-direct")))
        #expect(Set(Harness.files(in: spool)) == [".hidden", "upload.tmp"], "in-progress files stay untouched")
        // Renaming an in-progress file into place ships it.
        #expect(rename(spool.appendingPathComponent("upload.tmp").path, spool.appendingPathComponent("upload.bin").path) == 0)
        #expect(Harness.waitUntil(timeout: 30) { Harness.files(in: dest).contains("upload.bin") })
        agent.kill(SIGTERM)
        #expect(agent.wait(timeout: 30) == 0, "SIGTERM is a clean stop:\n\(agent.output)")
    }

    @Test func fileHeldOpenForWriting_shipsOnlyAfterItsLastClose() throws {
        let c = try Cluster("blob-held-open")
        defer { c.remove() }
        try c.startCollector()
        let spool = try c.spool()
        let held = spool.appendingPathComponent("held.bin")
        _ = FileManager.default.createFile(atPath: held.path, contents: nil)
        let writer = try FileHandle(forWritingTo: held)
        writer.write(Data(repeating: 1, count: 1000))
        let agent = try c.startAgent(c.agentArgs(spools: [("spool", spool)]))
        defer { agent.stop() }
        // A marker shipped after the agent's first scan proves the agent has looked.
        try Harness.writeRandomFile(spool.appendingPathComponent("marker"), size: 10, seed: 1)
        #expect(Harness.waitUntil(timeout: 30) { Harness.files(in: c.committed()).contains("marker") }, "\(agent.output)")
        #expect(!Harness.files(in: c.committed()).contains("held.bin"), "not shipped while a writer holds it open")
        writer.write(Data(repeating: 2, count: 1000))
        try writer.close()
        #expect(Harness.waitUntil(timeout: 30) { Harness.files(in: c.committed()).contains("held.bin") }, "\(agent.output)")
        let got = try Data(contentsOf: c.committed().appendingPathComponent("held.bin"))
        #expect(got == Data(repeating: 1, count: 1000) + Data(repeating: 2, count: 1000), "every byte written before the close")
        c.collector!.kill(SIGTERM)
        #expect(c.collector!.wait(timeout: 30) == 0, "SIGTERM stops the collector cleanly")
    }

    /// `--once` ships what is there now; a file that a process still holds open for writing
    /// is not complete yet, so the run waits for its close (and ships it), and if it never
    /// comes, fails at its timeout naming the file: it does not end with success and the
    /// file silently left behind.
    @Test func once_waitsForAFileStillOpenForWriting_andNamesItIfItNeverCloses() throws {
        let c = try Cluster("blob-once-held")
        defer { c.remove() }
        try c.startCollector()
        let spool = try c.spool()
        let held = spool.appendingPathComponent("held.bin")
        let fd = open(held.path, O_WRONLY | O_CREAT | O_CLOEXEC, 0o644)
        #expect(fd >= 0)
        var closed = false
        defer { if !closed { close(fd) } }
        let first = [UInt8](repeating: 1, count: 1000), second = [UInt8](repeating: 2, count: 1000)
        #expect(write(fd, first, first.count) == first.count)
        try Harness.writeRandomFile(spool.appendingPathComponent("done-1"), size: 100, seed: 1)
        let (status, out) = try c.runOnce(c.agentArgs(spools: [("spool", spool)], extra: ["--timeout", "2"]), timeout: 60)
        #expect(status == 1, "\(out)")
        #expect(out.contains("1 file(s) still open for writing") && out.contains("spool/held.bin"), "\(out)")
        #expect(Harness.files(in: c.committed()) == ["done-1"], "what was complete shipped")
        #expect(Harness.files(in: spool) == ["held.bin"], "the open file stays")
        // A second run: the writer closes while the agent waits for it.
        try Harness.writeRandomFile(spool.appendingPathComponent("done-2"), size: 100, seed: 2)
        let agent = try c.startAgent(c.agentArgs(spools: [("spool", spool)], extra: ["--timeout", "60"]) + ["--once"])
        defer { agent.stop() }
        #expect(Harness.waitUntil(timeout: 30) { Harness.files(in: c.committed()).contains("done-2") }, "\(agent.output)")
        #expect(agent.isRunning, "the run waits for the file still open:\n\(agent.output)")
        #expect(write(fd, second, second.count) == second.count)
        close(fd)
        closed = true
        #expect(agent.wait(timeout: 60) == 0, "\(agent.output)")
        let got = try Data(contentsOf: c.committed().appendingPathComponent("held.bin"))
        #expect(got == Data(first + second), "every byte written before the close")
        #expect(Harness.files(in: spool).isEmpty)
    }

    @Test func once_stoppedBySIGTERM_exitsNonZero_andLosesNothing() throws {
        let c = try Cluster("blob-once-term")
        defer { c.remove() }
        let spool = try c.spool()
        var p = try c.payload()
        try p.add("x", size: 1000, seed: 1, into: spool)
        // No collector: the agent keeps retrying until it is stopped.
        let agent = try c.startAgent(c.agentArgs(spools: [("spool", spool)], target: unusedPort()) + ["--once"])
        #expect(Harness.waitUntil(timeout: 30) { agent.output.contains("connection to collector failed") })
        agent.kill(SIGTERM)
        #expect(agent.wait(timeout: 30) == 1)
        #expect(agent.output.contains("not yet shipped"), "\(agent.output)")
        #expect(try p.identical(in: spool) == ["x"])
    }

    @Test func aFileThatCannotBeRemoved_holdsUpNothing_andNeverStopsAStart() throws {
        let c = try Cluster("blob-immutable")
        defer {
            _ = try? run("/usr/bin/chattr", ["-i", c.root.appendingPathComponent("spool/stuck").path])
            c.remove()
        }
        try c.startCollector()
        let spool = try c.spool()
        var p = try c.payload()
        for i in 0..<5 { try p.add("ok\(i)", size: 3000, seed: UInt64(i), into: spool) }
        try p.add("stuck", size: 3000, seed: 99, into: spool)
        // An immutable file can be read and shipped, but not deleted, even by root.
        #expect(try run("/usr/bin/chattr", ["+i", spool.appendingPathComponent("stuck").path]) == 0)
        var agent = try c.startAgent(c.agentArgs(spools: [("spool", spool)]))
        #expect(Harness.waitUntil(timeout: 30) { Harness.files(in: spool) == ["stuck"] }, "\(agent.output)")
        #expect(try p.identical(in: c.committed()).count == 6)
        #expect(Harness.waitUntil(timeout: 30) { agent.output.contains("cannot remove an acknowledged file") })
        // A restart with the file still stuck comes up and keeps serving.
        agent.kill(SIGKILL)
        _ = agent.wait(timeout: 10)
        agent = try c.startAgent(c.agentArgs(spools: [("spool", spool)]))
        defer { agent.stop() }
        try p.add("later", size: 3000, seed: 7, into: spool)
        #expect(Harness.waitUntil(timeout: 30) { Harness.files(in: c.committed()).contains("later") && !Harness.files(in: spool).contains("later") }, "\(agent.output)")
        #expect(agent.isRunning)
        // Once it can be removed, it is, without being sent again.
        #expect(try run("/usr/bin/chattr", ["-i", spool.appendingPathComponent("stuck").path]) == 0)
        #expect(Harness.waitUntil(timeout: 30) { Harness.files(in: spool).isEmpty }, "\(agent.output)")
        #expect(Harness.files(in: c.committed()).count == 7, "nothing committed twice")
    }

    @Test func archiveDir_keepsAcknowledgedFiles() throws {
        let c = try Cluster("blob-archive")
        defer { c.remove() }
        try c.startCollector()
        let spool = try c.spool()
        var p = try c.payload()
        for i in 0..<5 { try p.add("a\(i)", size: 5000, seed: UInt64(i), into: spool) }
        let archive = c.root.appendingPathComponent("archive")
        let (status, out) = try c.runOnce(c.agentArgs(spools: [("spool", spool)], extra: ["--archive-dir", archive.path]))
        #expect(status == 0, "\(out)")
        #expect(Harness.files(in: spool).isEmpty)
        #expect(try p.identical(in: archive.appendingPathComponent("spool")).count == 5)
        #expect(try p.identical(in: c.committed()).count == 5)
    }

    @Test func reusedName_neverOverwrites_andTheSameBytesAreNotStoredTwice() throws {
        let c = try Cluster("blob-reuse")
        defer { c.remove() }
        try c.startCollector()
        let spool = try c.spool()
        let dest = c.committed()
        var first = try c.payload("o1")
        try first.add("report.csv", size: 1000, seed: 1, into: spool)
        #expect(try c.runOnce(c.agentArgs(spools: [("spool", spool)])).0 == 0)
        // Another file under the same name: committed beside the first, never over it.
        var second = try c.payload("o2")
        try second.add("report.csv", size: 1000, seed: 2, into: spool)
        #expect(try c.runOnce(c.agentArgs(spools: [("spool", spool)])).0 == 0)
        #expect(try first.identical(in: dest) == ["report.csv"])
        #expect(try Harness.sameContents(dest.appendingPathComponent("report.csv~1"), second.originals.appendingPathComponent("report.csv")))
        // The first file's bytes again, with the agent's state lost: already committed.
        try FileManager.default.removeItem(at: c.root.appendingPathComponent("state"))
        var again = try c.payload("o3")
        try again.add("report.csv", size: 1000, seed: 1, into: spool)
        let (status, out) = try c.runOnce(c.agentArgs(spools: [("spool", spool)]))
        #expect(status == 0, "\(out)")
        #expect(Harness.files(in: dest) == ["report.csv", "report.csv~1"])
        #expect(Harness.files(in: spool).isEmpty)
    }

    @Test func once_givesUpWithAClearMessage_whenTheCollectorIsUnreachable() throws {
        let c = try Cluster("blob-unreachable")
        defer { c.remove() }
        let spool = try c.spool()
        try Harness.writeRandomFile(spool.appendingPathComponent("x"), size: 10, seed: 1)
        // A port nobody listens on: bind one, close it.
        let (status, out) = try c.runOnce(c.agentArgs(spools: [("spool", spool)], target: unusedPort(), extra: ["--timeout", "2"]), timeout: 60)
        #expect(status == 1)
        #expect(out.contains("no progress for 2 s"), "\(out)")
        #expect(out.contains("Connection refused"), "\(out)")
        #expect(Harness.files(in: spool) == ["x"], "nothing is lost")
    }
}

func unusedPort() -> UInt16 {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    defer { close(fd) }
    var a = sockaddr_in()
    a.sin_family = sa_family_t(AF_INET)
    a.sin_addr.s_addr = inet_addr("127.0.0.1")
    var len = socklen_t(MemoryLayout<sockaddr_in>.size)
    _ = withUnsafeMutablePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) } }
    _ = withUnsafeMutablePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }
    return UInt16(bigEndian: a.sin_port)
}

/// Runs a command to its end; returns its exit status.
func run(_ path: String, _ args: [String]) throws -> Int32 {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: path)
    p.arguments = args
    try p.run()
    p.waitUntilExit()
    return p.terminationStatus
}
