import CSpoolshipLinux
import Glibc

/// Directory watches with inotify(7). Events are read in a buffer loop (a directory watch
/// carries names, so events have different sizes); IN_Q_OVERFLOW is passed on so that the
/// owner rescans.
///
/// Sendable (checked): one thread reads events, others may `wake` it (a write(2) to a pipe,
/// which the kernel makes safe from any thread); the descriptors are `OwnedFD`s, set at init.
public final class Inotify: Sendable {
    public struct Event: Sendable {
        public var watch: Int32
        public var mask: UInt32
        /// The name as the kernel gave it, and as a String: nil when it is not valid UTF-8 (a
        /// name that no String can hold byte for byte).
        public var rawName: [UInt8]
        public var validName: String?
        /// The name, or for one that is not valid UTF-8 its bytes shown (`FileName.display`).
        public var name: String { validName ?? FileName.display(rawName) }
        public var overflow: Bool { mask & UInt32(IN_Q_OVERFLOW) != 0 }
    }

    let fd: OwnedFD
    /// A self-pipe: `wake()` makes a `read` under way return at once, for what another thread
    /// knows before the kernel has anything to say.
    private let wakeRead: OwnedFD
    private let wakeWrite: OwnedFD

    public init() throws {
        let raw = try syscall("inotify_init1") { inotify_init1(Int32(IN_CLOEXEC | IN_NONBLOCK)) }
        fd = OwnedFD(raw, label: "inotify")
        var fds: [Int32] = [-1, -1]
        do {
            _ = try syscall("pipe2") { spsh_pipe2(&fds, O_CLOEXEC | O_NONBLOCK) }
        } catch {
            try? fd.close()
            throw error
        }
        wakeRead = OwnedFD(fds[0], label: "inotify wake pipe")
        wakeWrite = OwnedFD(fds[1], label: "inotify wake pipe")
    }

    /// Ends the current (or next) `read` early, with whatever events are there.
    public func wake() {
        var b: UInt8 = 1
        _ = Glibc.write(wakeWrite.raw, &b, 1)  // a full pipe is already a pending wake
    }

    /// The events a spool directory is watched for: a file closed after writing or moved in is
    /// complete; the directory itself going away is worth a warning.
    /// IN_CREATE too: a hard link made into a spool, and a symlink, FIFO, socket or device
    /// placed there, bring no other event.
    public static let spoolMask = UInt32(IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR)

    public func watch(_ path: String, mask: UInt32 = Inotify.spoolMask) throws -> Int32 {
        let wd = inotify_add_watch(fd.raw, path, mask)
        if wd < 0 {
            let e = Glibc.errno
            if e == ENOSPC {
                throw SyscallError(call: "inotify_add_watch", path: "\(path) (too many watches: raise the sysctl fs.inotify.max_user_watches)", errno: e)
            }
            throw SyscallError(call: "inotify_add_watch", path: path, errno: e)
        }
        return wd
    }

    /// Waits up to `timeout` seconds for events; returns them (empty on timeout).
    public func read(timeout: Double) throws -> [Event] {
        var pfds = [pollfd(fd: fd.raw, events: Int16(POLLIN), revents: 0),
                    pollfd(fd: wakeRead.raw, events: Int16(POLLIN), revents: 0)]
        let n = poll(&pfds, 2, Int32(timeout * 1000))
        if n < 0 && Glibc.errno != EINTR { throw SyscallError(call: "poll", path: "inotify", errno: Glibc.errno) }
        if n <= 0 { return [] }
        if pfds[1].revents != 0 {
            var drain = [UInt8](repeating: 0, count: 64)
            while Glibc.read(wakeRead.raw, &drain, drain.count) > 0 {}
        }
        if pfds[0].revents == 0 { return [] }
        var events: [Event] = []
        var buf = [UInt8](repeating: 0, count: 64 * 1024)
        while true {
            let got = buf.withUnsafeMutableBytes { Glibc.read(fd.raw, $0.baseAddress!, $0.count) }
            if got < 0 {
                let e = Glibc.errno
                if e == EINTR { continue }
                if e == EAGAIN { break }
                throw SyscallError(call: "read", path: "inotify", errno: e)
            }
            if got == 0 { break }
            // struct inotify_event { int wd; uint32_t mask, cookie, len; char name[]; }: the
            // name (NUL-padded to `len`) starts at byte 16, the next event at 16 + len.
            var pos = 0
            while pos + 16 <= got {
                let (wd, mask, len) = buf.withUnsafeBytes { p -> (Int32, UInt32, Int) in
                    (p.loadUnaligned(fromByteOffset: pos, as: Int32.self),
                     p.loadUnaligned(fromByteOffset: pos + 4, as: UInt32.self),
                     Int(p.loadUnaligned(fromByteOffset: pos + 12, as: UInt32.self)))
                }
                var nameBytes = buf[(pos + 16)..<min(pos + 16 + len, got)]
                if let z = nameBytes.firstIndex(of: 0) { nameBytes = nameBytes[..<z] }
                let raw = Array(nameBytes)
                events.append(Event(watch: wd, mask: mask, rawName: raw, validName: FileName.decode(raw)))
                pos += 16 + len
            }
        }
        return events
    }
}
