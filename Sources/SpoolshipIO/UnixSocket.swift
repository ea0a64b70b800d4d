import Foundation
import Glibc

/// AF_UNIX stream sockets: the daemons' control sockets (unix(7)).
extension Socket {
    /// The longest path a sockaddr_un holds (108 bytes with its NUL).
    public static let maxUnixPath = MemoryLayout.size(ofValue: sockaddr_un().sun_path) - 1

    static func unixAddress(_ path: String) throws -> sockaddr_un {
        let bytes = Array(path.utf8)
        guard !bytes.isEmpty, bytes.count <= maxUnixPath else {
            throw SyscallError(call: "bind", path: "\(path) (a socket path must be 1 to \(maxUnixPath) bytes; this one is \(bytes.count))", errno: ENAMETOOLONG)
        }
        var a = sockaddr_un()
        a.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &a.sun_path) { p in
            for (i, b) in bytes.enumerated() { p[i] = b }
            p[bytes.count] = 0
        }
        return a
    }

    /// Binds a listening socket at `path` with mode `mode`. It is bound under a temporary name
    /// in the same directory, given its mode, and renamed over `path` (which replaces a stale
    /// socket left there): no one can connect before the mode is set.
    public static func listenUnix(_ path: String, mode: mode_t, backlog: Int32 = 16) throws -> Socket {
        let dir = (path as NSString).deletingLastPathComponent
        // A short temporary name, so that any path that fits a socket address can be bound.
        let tmp = (dir.isEmpty ? "" : dir + "/") + ".\(getpid())"
        _ = try unixAddress(path)
        var addr = try unixAddress(tmp)
        let raw = Glibc.socket(AF_UNIX, Int32(SOCK_STREAM.rawValue | SOCK_CLOEXEC.rawValue), 0)
        guard raw >= 0 else { throw SyscallError(call: "socket", path: path, errno: Glibc.errno) }
        let fd = OwnedFD(raw, label: path)
        _ = unlink(tmp)
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.bind(raw, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard rc == 0 else { throw SyscallError(call: "bind", path: tmp, errno: Glibc.errno) }
        do {
            _ = try syscall("chmod", tmp) { chmod(tmp, mode) }
            _ = try syscall("listen", tmp) { Glibc.listen(raw, backlog) }
            _ = try syscall("rename", "\(tmp) -> \(path)") { rename(tmp, path) }
        } catch {
            _ = unlink(tmp)
            throw error
        }
        return Socket(fd: fd, peer: path)
    }

    /// Connects to the stream socket at `path`. ENOENT: nothing there; ECONNREFUSED: a socket
    /// file that no process listens on (a daemon that died).
    public static func connectUnix(_ path: String, timeout: Double) throws -> Socket {
        var addr = try unixAddress(path)
        let raw = Glibc.socket(AF_UNIX, Int32(SOCK_STREAM.rawValue | SOCK_CLOEXEC.rawValue), 0)
        guard raw >= 0 else { throw SyscallError(call: "socket", path: path, errno: Glibc.errno) }
        let s = Socket(fd: OwnedFD(raw, label: path), peer: path)
        // A unix-socket connect blocks only while the listener's backlog is full; the send
        // deadline bounds it (connect(2) takes SO_SNDTIMEO for AF_UNIX).
        s.setTimeouts(receive: timeout, send: timeout)
        while true {
            let rc = withUnsafePointer(to: &addr) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(raw, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
            }
            if rc == 0 { return s }
            let e = Glibc.errno
            if e == EINTR { continue }
            throw SyscallError(call: "connect", path: path, errno: e == EAGAIN ? ETIMEDOUT : e)
        }
    }
}
