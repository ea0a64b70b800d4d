import CSpoolshipLinux
import Foundation
import Glibc
import SpoolshipCore
import Synchronization

/// File-system operations, each wrapped once, with errors naming the call and the path.
public enum Files {
    public static func open(_ path: String, _ flags: Int32, mode: mode_t = 0o644) throws -> OwnedFD {
        let fd = try syscall("open", path) { Glibc.open(path, flags | O_CLOEXEC, mode) }
        return OwnedFD(fd, label: path)
    }

    public static func openDirectory(_ path: String) throws -> OwnedFD {
        try open(path, O_RDONLY | O_DIRECTORY)
    }

    /// How `openBeneath` keeps its promise on this host, decided once, at the first use (the
    /// daemons ask at start, and log it).
    public enum BeneathRoute: Equatable, Sendable {
        /// openat2(2) with RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS.
        case openat2
        /// openat2 is refused (the errno says why): one openat(2) a component, with O_NOFOLLOW,
        /// each below the directory descriptor before it.
        case perComponent(errno: Int32)

        public var description: String {
            switch self {
            case .openat2: return "openat2 with RESOLVE_BENEATH and RESOLVE_NO_SYMLINKS"
            case .perComponent(let e):
                return "openat per path component with O_NOFOLLOW (openat2 refused: \(String(cString: strerror(e))), errno \(e))"
            }
        }
    }

    private static let resolveBeneath = spsh_RESOLVE_BENEATH | spsh_RESOLVE_NO_SYMLINKS | spsh_RESOLVE_NO_MAGICLINKS

    /// openat2 is missing before Linux 5.6, and seccomp filters refuse it without looking at
    /// its arguments, which they cannot read: systemd's RestrictSUIDSGID= answers ENOSYS,
    /// container runtimes ENOSYS or EPERM. One probe, on "." beneath "/", tells.
    public static let beneathRoute: BeneathRoute = {
        let root = Glibc.open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard root >= 0 else { return .openat2 }
        defer { Glibc.close(root) }
        var fd: Int32
        repeat { fd = spsh_openat2(root, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC, 0, resolveBeneath) } while fd < 0 && Glibc.errno == EINTR
        if fd >= 0 {
            Glibc.close(fd)
            return .openat2
        }
        let e = Glibc.errno
        return e == ENOSYS || e == EPERM ? .perComponent(errno: e) : .openat2
    }()

    /// Opens `name` relative to `dir`, never outside it and never through a symlink: the result
    /// is always inside `dir`. With openat2(2) where the host allows it, else one component at
    /// a time (see `BeneathRoute`). An absolute name or a `..` fails with EXDEV, a symlink with
    /// ELOOP (ENOTDIR for a directory on the way, on the second route). `route` is for tests.
    public static func openBeneath(_ dir: OwnedFD, _ name: String, _ flags: Int32, mode: mode_t = 0o644, label: String,
                                   route: BeneathRoute = beneathRoute) throws -> OwnedFD {
        let fd: Int32
        switch route {
        case .openat2:
            fd = try syscall("openat2", label) { spsh_openat2(dir.raw, name, flags | O_CLOEXEC, UInt32(mode), resolveBeneath) }
        case .perComponent:
            fd = try syscall("openat", label) { spsh_openat_beneath(dir.raw, name, flags | O_CLOEXEC, UInt32(mode)) }
        }
        return OwnedFD(fd, label: label)
    }

    /// Makes `name` a directory under `dir` (if missing) and opens it beneath `dir`, syncing
    /// `dir` when the entry is new so that the new directory survives a crash.
    public static func ensureDirectory(_ dir: OwnedFD, _ name: String, label: String, mode: mode_t = 0o755) throws -> OwnedFD {
        if mkdirat(dir.raw, name, mode) == 0 {
            try fsync(dir)
        } else if Glibc.errno != EEXIST {
            throw SyscallError(call: "mkdirat", path: label, errno: Glibc.errno)
        }
        return try openBeneath(dir, name, O_RDONLY | O_DIRECTORY, label: label)
    }

    /// mkdir -p of an absolute or relative path, syncing each parent that gained an entry.
    public static func makeDirectories(_ path: String, mode: mode_t = 0o755) throws {
        var current = path.hasPrefix("/") ? "/" : ""
        for part in path.split(separator: "/") {
            let parent = current.isEmpty ? "." : current
            current += (current.isEmpty || current.hasSuffix("/") ? "" : "/") + part
            if mkdir(current, mode) == 0 {
                if let p = try? openDirectory(parent) { try? fsync(p) }
            } else if Glibc.errno != EEXIST {
                throw SyscallError(call: "mkdir", path: current, errno: Glibc.errno)
            }
        }
    }

    public static func fdatasync(_ fd: OwnedFD) throws {
        _ = try syscall("fdatasync", fd.label) { Glibc.fdatasync(fd.raw) }
    }

    public static func fsync(_ fd: OwnedFD) throws {
        _ = try syscall("fsync", fd.label) { Glibc.fsync(fd.raw) }
    }

    /// syncfs(2) of the file system `fd` is on, then an fsync of `fd` itself: every dirty page
    /// and inode of that file system written and flushed. The fsync is there for file systems
    /// that write some metadata only in syncfs's last step, after its cache flush (ext4 without
    /// a journal writes its inode table blocks there): the flush of the fsync, which comes
    /// after, covers them. Errors: syncfs's (the file system's writeback errors since `fd`
    /// was opened or last synced, once each, from Linux 5.8 on; see `syncfsReportsErrors`).
    public static func syncFileSystem(_ fd: OwnedFD) throws {
        _ = try syscall("syncfs", fd.label) { spsh_syncfs(fd.raw) }
        try fsync(fd)
    }

    /// Whether this kernel's syncfs(2) reports writeback errors (Linux 5.8 and later). Before,
    /// it returned 0 whatever happened, and only each file's own fdatasync can prove it durable.
    public static let syncfsReportsErrors: Bool = {
        var u = utsname()
        guard uname(&u) == 0 else { return false }
        let release = withUnsafeBytes(of: &u.release) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        let parts = release.split(whereSeparator: { !$0.isNumber }).prefix(2).compactMap { Int($0) }
        guard parts.count == 2 else { return false }
        return (parts[0], parts[1]) >= (5, 8)
    }()

    public static func fstat(_ fd: OwnedFD) throws -> stat {
        var st = stat()
        _ = try syscall("fstat", fd.label) { Glibc.fstat(fd.raw, &st) }
        return st
    }

    /// lstat of `name` in `dir`; nil when it does not exist.
    public static func statAt(_ dir: OwnedFD, _ name: String, label: String) throws -> stat? {
        var st = stat()
        if fstatat(dir.raw, name, &st, AT_SYMLINK_NOFOLLOW) == 0 { return st }
        if Glibc.errno == ENOENT { return nil }
        throw SyscallError(call: "fstatat", path: label, errno: Glibc.errno)
    }

    /// lstat of a name given as bytes (one that may not be valid UTF-8) in `dir`; nil when it
    /// does not exist.
    public static func statAt(_ dir: OwnedFD, rawName: [UInt8]) throws -> stat? {
        var st = stat()
        let r = (rawName + [0]).withUnsafeBufferPointer { p in
            p.baseAddress!.withMemoryRebound(to: CChar.self, capacity: p.count) { fstatat(dir.raw, $0, &st, AT_SYMLINK_NOFOLLOW) }
        }
        if r == 0 { return st }
        if Glibc.errno == ENOENT { return nil }
        throw SyscallError(call: "fstatat", path: dir.label + "/" + FileName.display(rawName), errno: Glibc.errno)
    }

    /// Renames without ever replacing: returns false when `to` exists (EEXIST).
    public static func renameNoReplace(_ fromDir: OwnedFD, _ from: String, _ toDir: OwnedFD, _ to: String, label: String) throws -> Bool {
        while true {
            if spsh_renameat2(fromDir.raw, from, toDir.raw, to, spsh_RENAME_NOREPLACE) == 0 { return true }
            let e = Glibc.errno
            if e == EINTR { continue }
            if e == EEXIST { return false }
            throw SyscallError(call: "renameat2", path: label, errno: e)
        }
    }

    /// A new file with no name in `dir` (O_TMPFILE), for `linkUnnamed` to name once it is
    /// complete; nil where the file system cannot make one (EOPNOTSUPP, EISDIR).
    public static func openUnnamed(in dir: OwnedFD, mode: mode_t = 0o644, label: String) throws -> OwnedFD? {
        while true {
            let fd = spsh_open_unnamed(dir.raw, UInt32(mode))
            if fd >= 0 { return OwnedFD(fd, label: label) }
            let e = Glibc.errno
            if e == EINTR { continue }
            if e == EOPNOTSUPP || e == EISDIR { return nil }
            throw SyscallError(call: "open O_TMPFILE", path: label, errno: e)
        }
    }

    /// Names the unnamed file `fd` `name` in `dir`, never replacing a file: false when the
    /// name is taken.
    public static func linkUnnamed(_ fd: OwnedFD, _ dir: OwnedFD, _ name: String, label: String) throws -> Bool {
        while true {
            if spsh_link_unnamed(fd.raw, dir.raw, name) == 0 { return true }
            let e = Glibc.errno
            if e == EINTR { continue }
            if e == EEXIST { return false }
            throw SyscallError(call: "linkat", path: label, errno: e)
        }
    }

    /// unlink; false when it was already gone.
    @discardableResult
    public static func unlink(_ dir: OwnedFD, _ name: String, label: String) throws -> Bool {
        if unlinkat(dir.raw, name, 0) == 0 { return true }
        if Glibc.errno == ENOENT { return false }
        throw SyscallError(call: "unlinkat", path: label, errno: Glibc.errno)
    }

    /// renameat(2), replacing `to` if it exists.
    public static func rename(_ fromDir: OwnedFD, _ from: String, _ toDir: OwnedFD, _ to: String, label: String) throws {
        _ = try syscall("renameat", label) { renameat(fromDir.raw, from, toDir.raw, to) }
    }

    /// Opens `name` beneath `dir` for reading (no symlink followed, never blocking on a FIFO);
    /// nil when it does not exist.
    public static func openIfPresent(_ dir: OwnedFD, _ name: String, label: String) throws -> OwnedFD? {
        do {
            return try openBeneath(dir, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK, label: label)
        } catch let e as SyscallError where e.errno == ENOENT {
            return nil
        }
    }

    /// The file's birth time in nanoseconds (statx), or 0 where the file system keeps none.
    public static func birth(_ fd: OwnedFD) throws -> Int64 {
        let b = spsh_birth_ns(fd.raw)
        if b < 0 { throw SyscallError(call: "statx", path: fd.label, errno: Glibc.errno) }
        return b
    }

    /// The offset of the last newline in [from, to) of `fd`, or nil: read backwards from `to`,
    /// 64 KiB at a time.
    public static func lastNewline(_ fd: OwnedFD, from: UInt64, to: UInt64) throws -> UInt64? {
        guard to > from else { return nil }
        let block = 64 << 10
        let buf = UnsafeMutableRawPointer.allocate(byteCount: block, alignment: 16)
        defer { buf.deallocate() }
        var end = to
        while end > from {
            let start = end - min(UInt64(block), end - from)
            let want = Int(end - start)
            let n = try syscall("pread", fd.label) { Glibc.pread(fd.raw, buf, want, Int(start)) }
            if n < want { throw SyscallError(call: "pread", path: fd.label + " (file shorter than expected)", errno: EIO) }
            let bytes = buf.assumingMemoryBound(to: UInt8.self)
            var i = want - 1
            while i >= 0 {
                if bytes[i] == UInt8(ascii: "\n") { return start + UInt64(i) }
                i -= 1
            }
            end = start
        }
        return nil
    }

    public static func truncate(_ fd: OwnedFD, _ size: Int64) throws {
        _ = try syscall("ftruncate", fd.label) { ftruncate(fd.raw, Int(size)) }
    }

    public static func writeAll(_ fd: OwnedFD, _ bytes: [UInt8]) throws {
        var done = 0
        while done < bytes.count {
            done += try syscall("write", fd.label) { bytes.withUnsafeBytes { Glibc.write(fd.raw, $0.baseAddress! + done, $0.count - done) } }
        }
    }

    public static func pwriteAll(_ fd: OwnedFD, _ bytes: ArraySlice<UInt8>, at offset: Int64) throws {
        var done = 0
        let arr = Array(bytes)
        while done < arr.count {
            done += try syscall("pwrite", fd.label) { arr.withUnsafeBytes { Glibc.pwrite(fd.raw, $0.baseAddress! + done, $0.count - done, Int(offset) + done) } }
        }
    }

    public static func readAll(_ fd: OwnedFD) throws -> [UInt8] {
        var out: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 1 << 16)
        while true {
            let n = try syscall("read", fd.label) { buf.withUnsafeMutableBytes { Glibc.read(fd.raw, $0.baseAddress!, $0.count) } }
            if n == 0 { return out }
            out += buf[0..<n]
        }
    }

    /// Updates `crc` with the bytes of `fd` in `[from, to)`, read with pread (page cache).
    /// `progress` is called after each MiB; it may throw to give up.
    public static func checksum(_ fd: OwnedFD, from: Int64, to: Int64, into crc: inout CRC32, progress: () throws -> Void = {}) throws {
        guard to > from else { return }
        if to - from >= mappedChecksumMinimum {
            try checksumMapped(fd, from: from, to: to, into: &crc, progress: progress)
            return
        }
        // Sized to the range and left uninitialised: for small files, zeroing a whole chunk
        // cost more than reading them (a tenth of each daemon's CPU on 4 KiB files).
        // At most 256 KiB: it stays in the L2 cache between the read and the CRC, and 200
        // connections checksumming at once hold 50 MiB of buffers, not 200.
        let chunk = Int(min(Int64(256 << 10), to - from))
        let buf = UnsafeMutableRawPointer.allocate(byteCount: chunk, alignment: 64)
        defer { buf.deallocate() }
        var pos = from
        while pos < to {
            let want = Int(min(Int64(chunk), to - pos))
            let n = try syscall("pread", fd.label) { Glibc.pread(fd.raw, buf, want, Int(pos)) }
            if n == 0 { throw SyscallError(call: "pread", path: fd.label + " (file shorter than expected)", errno: EIO) }
            crc.update(UnsafeRawBufferPointer(start: buf, count: n))
            pos += Int64(n)
            try progress()
        }
    }

    /// Ranges from this size on are checksummed through a mapping of the file (no copy of
    /// the bytes into a buffer); smaller ones by pread, which costs less than a mapping's set-up
    /// and tear-down.
    public static let mappedChecksumMinimum: Int64 = 1 << 20

    /// The CRC-32 of a range through a read-only shared mapping (`spsh_crc32_mapped`), 4 MiB
    /// at a time with `progress` between. A truncation under the mapping, or a page that
    /// cannot be read, is caught as SIGBUS in the C shim and thrown as EIO; a file shorter than
    /// the range is an error as for pread.
    static func checksumMapped(_ fd: OwnedFD, from: Int64, to: Int64, into crc: inout CRC32, progress: () throws -> Void) throws {
        let size = Int64(try fstat(fd).st_size)
        if size < to { throw SyscallError(call: "pread", path: fd.label + " (file shorter than expected)", errno: EIO) }
        var value = crc.value
        var pos = from
        while pos < to {
            let n = min(Int64(4 << 20), to - pos)
            _ = try syscall("mmap", fd.label) { spsh_crc32_mapped(fd.raw, pos, n, &value) }
            pos += n
            try progress()
        }
        crc = CRC32(value: value)
    }

    /// The processors this process may use, read once: Foundation reads the cgroup's CPU
    /// limit from /sys on every call to `activeProcessorCount`, which cost 7 % of the agent's
    /// CPU on small files when it was read for every seal.
    static let processors = ProcessInfo.processInfo.activeProcessorCount

    /// The CRC-32 of the first `size` bytes of `fd`. Large files are read in `threads` slices
    /// at once, on threads of their own, and the slices' CRCs combined (crc32_combine): sealing
    /// a large file is then bound by the disk or memory, not by one core's CRC speed.
    /// `progress` is called on the calling thread as its slice goes (see above).
    public static func checksum(_ fd: OwnedFD, size: Int64, threads: Int? = nil,
                                progress: () throws -> Void = {}) throws -> UInt32 {
        let parts = size >= 64 << 20 ? max(1, min(threads ?? processors, 8)) : 1
        if parts == 1 {
            var c = CRC32()
            try checksum(fd, from: 0, to: size, into: &c, progress: progress)
            return c.value
        }
        let slice = (size + Int64(parts) - 1) / Int64(parts)
        let bounds = (0..<parts).map { i in (Int64(i) * slice, min(size, Int64(i + 1) * slice)) }
        let shared = SliceResults(parts)
        let group = DispatchGroup()
        for i in 1..<parts {
            group.enter()
            let t = Thread {
                var c = CRC32()
                do {
                    try checksum(fd, from: bounds[i].0, to: bounds[i].1, into: &c)
                } catch {
                    shared.state.withLock { $0.failure = error }
                }
                shared.state.withLock { $0.crcs[i] = c.value }
                group.leave()
            }
            t.name = "checksum-\(i)"
            t.start()
        }
        var first = CRC32()
        do {
            try checksum(fd, from: bounds[0].0, to: bounds[0].1, into: &first, progress: progress)
        } catch {
            group.wait()  // the other slices still read this fd
            throw error
        }
        group.wait()
        let (crcs, failure) = shared.state.withLock { ($0.crcs, $0.failure) }
        if let f = failure { throw f }
        var crc = first.value
        for i in 1..<parts { crc = CRC32.combine(crc, crcs[i], lengthOfB: bounds[i].1 - bounds[i].0) }
        return crc
    }

    /// The slices' CRCs and the last error, written by the slices' threads.
    private final class SliceResults: Sendable {
        let state: Mutex<(crcs: [UInt32], failure: (any Error)?)>
        init(_ parts: Int) { state = Mutex((Array(repeating: 0, count: parts), nil)) }
    }

    /// Replaces `path` atomically and durably with `bytes`: write a temp file beside it, fsync,
    /// rename over, fsync the directory.
    public static func replaceDurably(dir: String, name: String, bytes: [UInt8]) throws {
        let tmp = "\(dir)/.\(name).tmp"
        let fd = try open(tmp, O_WRONLY | O_CREAT | O_TRUNC, mode: 0o600)
        try writeAll(fd, bytes)
        try fsync(fd)
        try fd.close()
        _ = try syscall("rename", "\(dir)/\(name)") { Glibc.rename(tmp, "\(dir)/\(name)") }
        try fsync(openDirectory(dir))
    }

    /// Whether some process has the file open for writing; nil when the kernel cannot tell us
    /// (a lease needs the file's owner or CAP_LEASE). A read lease taken and given back at once.
    public static func hasWriters(_ fd: OwnedFD) -> Bool? {
        switch takeReadLease(fd) {
        case .held:
            releaseLease(fd)
            return false
        case .writers: return true
        case .unavailable: return nil
        }
    }

    /// A read lease held on a descriptor (see `spsh_take_read_lease`).
    public enum ReadLease: Sendable {
        /// Held: no one had the file open for writing when it was taken.
        case held
        /// Someone has the file open for writing.
        case writers
        /// The kernel will not give one (neither the owner nor CAP_LEASE).
        case unavailable
    }

    public static func takeReadLease(_ fd: OwnedFD) -> ReadLease {
        switch spsh_take_read_lease(fd.raw) {
        case 0: return .held
        case 1: return .writers
        default: return .unavailable
        }
    }

    /// Whether a lease taken with `takeReadLease` is still whole: false once any process has
    /// opened the file for writing since.
    public static func readLeaseIntact(_ fd: OwnedFD) -> Bool { spsh_read_lease_intact(fd.raw) == 1 }

    public static func releaseLease(_ fd: OwnedFD) { _ = spsh_release_lease(fd.raw) }

    /// Takes an exclusive advisory lock on `path` (created if missing) for the life of the
    /// returned descriptor; nil when another process holds it.
    public static func lockExclusive(_ path: String) throws -> OwnedFD? {
        let fd = try open(path, O_RDWR | O_CREAT, mode: 0o600)
        while flock(fd.raw, LOCK_EX | LOCK_NB) < 0 {
            if Glibc.errno == EINTR { continue }
            if Glibc.errno == EWOULDBLOCK { return nil }
            throw SyscallError(call: "flock", path: path, errno: Glibc.errno)
        }
        return fd
    }
}

extension Files {
    /// Bytes available to unprivileged writers on the file system of `path` (statvfs); nil
    /// when it cannot be told.
    public static func freeBytes(_ path: String) -> UInt64? {
        var s = statvfs()
        guard statvfs(path, &s) == 0 else { return nil }
        return UInt64(s.f_bavail) * UInt64(s.f_frsize)
    }
}

/// A file with secrets that others may read, or that cannot be read.
public struct SecretFileError: Error, CustomStringConvertible {
    public var description: String
}

extension Files {
    /// Reads a file that holds secrets, refusing it when its group or others have any access:
    /// the message names the file, its mode and the fix.
    public static func readPrivateFile(_ path: String, what: String) throws -> String {
        var st = stat()
        guard stat(path, &st) == 0 else {
            throw SecretFileError(description: "\(what) \(path): \(String(cString: strerror(Glibc.errno)))")
        }
        let mode = st.st_mode & 0o777
        if mode & 0o077 != 0 {
            throw SecretFileError(description: "\(what) \(path) is open to group or others (mode \(String(mode, radix: 8))); it holds secrets: run chmod 600 \(path)")
        }
        do {
            let fd = try open(path, O_RDONLY)
            return String(decoding: try readAll(fd), as: UTF8.self)
        } catch {
            throw SecretFileError(description: "\(what) \(path): \(error)")
        }
    }
}
