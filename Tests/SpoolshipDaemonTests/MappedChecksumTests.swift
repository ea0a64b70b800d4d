import CSpoolshipLinux
import Foundation
import Glibc
import SpoolshipCore
import SpoolshipIO
import Testing

/// The CRC-32 of rule R5 read through a mapping of the file (`Files.checksum` for ranges of
/// 1 MiB and more): the same CRC as through pread, and a fault under the mapping is an error
/// for that file, not the death of the daemon.
@Suite struct MappedChecksumTests {
    /// A file of `size` random bytes (seeded), open for reading; removed when the test ends.
    static func file(_ size: Int, seed: UInt64) throws -> (OwnedFD, [UInt8], URL) {
        var rng = seed
        var bytes = [UInt8](repeating: 0, count: size)
        for i in 0..<size {
            rng = rng &* 6364136223846793005 &+ 1442695040888963407
            bytes[i] = UInt8(truncatingIfNeeded: rng >> 33)
        }
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("spoolship-mapped-\(getpid())-\(seed)")
        try Data(bytes).write(to: url)
        let fd = open(url.path, O_RDONLY | O_CLOEXEC)
        #expect(fd >= 0)
        return (OwnedFD(fd, label: url.path), bytes, url)
    }

    @Test(arguments: [(1 << 20, 0), ((1 << 20) + 1, 0), (9 << 20 + 123, 4097), (5 << 20, (1 << 20) - 1)])
    func sameCRCAsThroughARead(size: Int, from: Int) throws {
        let (fd, bytes, url) = try Self.file(size, seed: UInt64(size + from))
        defer { try? FileManager.default.removeItem(at: url) }
        var want = CRC32()
        bytes[from...].withUnsafeBytes { want.update($0) }
        var got = CRC32()
        var steps = 0
        try Files.checksum(fd, from: Int64(from), to: Int64(size), into: &got, progress: { steps += 1 })
        #expect(got.value == want.value)
        #expect(steps >= 1, "progress is called as the range goes")
        #expect(try Files.checksum(fd, size: Int64(size)) == CRC32.zlib(bytes.withUnsafeBytes { UnsafeRawBufferPointer(rebasing: $0[...]) }))
    }

    /// Pages past the end of the file fault with SIGBUS, as a truncation under the mapping
    /// would: the shim catches it on the faulting thread and returns EIO; the process lives on,
    /// and the next checksum, on this thread or another, works.
    @Test func aFaultUnderTheMapping_isAnError_andTheProcessGoesOn() throws {
        let (fd, bytes, url) = try Self.file(1 << 20, seed: 7)
        defer { try? FileManager.default.removeItem(at: url) }
        for _ in 0..<3 {
            var crc: UInt32 = 0
            errno = 0
            #expect(spsh_crc32_mapped(fd.raw, 0, 3 << 20, &crc) == -1)
            #expect(errno == EIO)
        }
        // The guard is per thread: a fault on another thread is caught there.
        let other = Thread {
            var crc: UInt32 = 0
            let r = spsh_crc32_mapped(fd.raw, 0, 2 << 20, &crc)
            let e = errno
            Results.shared.set(r == -1 && e == EIO)
        }
        other.start()
        #expect(Results.shared.wait(timeout: 30) == true)
        var crc: UInt32 = 0
        #expect(spsh_crc32_mapped(fd.raw, 0, 1 << 20, &crc) == 0)
        #expect(crc == CRC32.zlib(bytes.withUnsafeBytes { UnsafeRawBufferPointer(rebasing: $0[...]) }))
        // Through Files: a range longer than the file is refused before mapping it.
        var c = CRC32()
        #expect(throws: SyscallError.self) { try Files.checksum(fd, from: 0, to: 2 << 20, into: &c) }
    }

    /// The other thread's verdict.
    final class Results: @unchecked Sendable {
        static let shared = Results()
        private let cond = NSCondition()
        private var value: Bool?
        func set(_ v: Bool) { cond.lock(); value = v; cond.broadcast(); cond.unlock() }
        func wait(timeout: Double) -> Bool? {
            cond.lock(); defer { cond.unlock() }
            let until = Date(timeIntervalSinceNow: timeout)
            while value == nil { if !cond.wait(until: until) { break } }
            return value
        }
    }
}
