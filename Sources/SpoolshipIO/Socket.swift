import CSpoolshipLinux
import Glibc
import Synchronization

/// A host and port, parsed from `HOST:PORT` (IPv4 or a name that resolves to IPv4; `[v6]:port`
/// for IPv6).
public struct Endpoint: CustomStringConvertible, Sendable, Equatable {
    public var host: String
    public var port: UInt16

    public init(host: String, port: UInt16) {
        self.host = host
        self.port = port
    }

    public init?(_ text: String) {
        var host: Substring
        var portText: Substring
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]") else { return nil }
            host = text[text.index(after: text.startIndex)..<close]
            let rest = text[text.index(after: close)...]
            guard rest.hasPrefix(":") else { return nil }
            portText = rest.dropFirst()
        } else {
            guard let colon = text.lastIndex(of: ":") else { return nil }
            host = text[..<colon]
            portText = text[text.index(after: colon)...]
        }
        guard !host.isEmpty, let port = UInt16(portText) else { return nil }
        self.host = String(host)
        self.port = port
    }

    public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
}

/// Blocking TCP sockets. Deadlines are SO_RCVTIMEO / SO_SNDTIMEO: a call that waits longer
/// fails with EAGAIN, which `Socket` reports as a timeout.
///
/// Sendable (checked): one thread reads and writes a socket, and another may stop it
/// (`shutdown`, which wakes the first); the descriptor is an `OwnedFD` and the one mutable
/// field is behind a `Mutex`.
public final class Socket: Sendable {
    public let fd: OwnedFD
    public let peer: String

    public init(fd: OwnedFD, peer: String) {
        self.fd = fd
        self.peer = peer
    }

    static func addresses(_ ep: Endpoint, passive: Bool) throws -> [(Int32, [UInt8])] {
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        hints.ai_flags = passive ? AI_PASSIVE : 0
        var res: UnsafeMutablePointer<addrinfo>?
        let rc = getaddrinfo(ep.host, String(ep.port), &hints, &res)
        guard rc == 0, let first = res else {
            throw SyscallError(call: "getaddrinfo", path: "\(ep): \(String(cString: gai_strerror(rc)))", errno: EINVAL)
        }
        defer { freeaddrinfo(first) }
        var out: [(Int32, [UInt8])] = []
        var p: UnsafeMutablePointer<addrinfo>? = first
        while let ai = p {
            let bytes = Array(UnsafeRawBufferPointer(start: ai.pointee.ai_addr, count: Int(ai.pointee.ai_addrlen)))
            out.append((ai.pointee.ai_family, bytes))
            p = ai.pointee.ai_next
        }
        return out
    }

    /// Listens on `ep` (port 0: any free port); returns the socket and the bound port.
    public static func listen(_ ep: Endpoint, backlog: Int32 = 1024) throws -> (Socket, UInt16) {
        let addrs = try addresses(ep, passive: true)
        var lastError = SyscallError(call: "bind", path: ep.description, errno: EADDRNOTAVAIL)
        for (family, addr) in addrs {
            let raw = Glibc.socket(family, Int32(SOCK_STREAM.rawValue | SOCK_CLOEXEC.rawValue), 0)
            if raw < 0 { lastError = SyscallError(call: "socket", path: ep.description, errno: Glibc.errno); continue }
            let fd = OwnedFD(raw, label: "listen \(ep)")
            var one: Int32 = 1
            setsockopt(raw, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
            let rc = addr.withUnsafeBytes { Glibc.bind(raw, $0.baseAddress!.assumingMemoryBound(to: sockaddr.self), socklen_t(addr.count)) }
            if rc < 0 { lastError = SyscallError(call: "bind", path: ep.description, errno: Glibc.errno); continue }
            if Glibc.listen(raw, backlog) < 0 { lastError = SyscallError(call: "listen", path: ep.description, errno: Glibc.errno); continue }
            let port = try boundPort(fd)
            return (Socket(fd: fd, peer: ep.description), port)
        }
        throw lastError
    }

    public static func boundPort(_ fd: OwnedFD) throws -> UInt16 {
        var ss = sockaddr_storage()
        var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
        _ = try withUnsafeMutablePointer(to: &ss) { (p) throws -> Int32 in
            try syscall("getsockname", fd.label) { p.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd.raw, $0, &len) } }
        }
        return Self.port(of: ss)
    }

    static func port(of ss: sockaddr_storage) -> UInt16 {
        var s = ss
        return withUnsafePointer(to: &s) { p in
            if Int32(ss.ss_family) == AF_INET6 {
                return p.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { UInt16(bigEndian: $0.pointee.sin6_port) }
            }
            return p.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { UInt16(bigEndian: $0.pointee.sin_port) }
        }
    }

    static func describe(_ ss: sockaddr_storage) -> String {
        var s = ss
        var host = [CChar](repeating: 0, count: 64)
        let port = Self.port(of: ss)
        return withUnsafePointer(to: &s) { p -> String in
            if Int32(ss.ss_family) == AF_INET6 {
                return p.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { a -> String in
                    var addr = a.pointee.sin6_addr
                    inet_ntop(AF_INET6, &addr, &host, 64)
                    return "[\(host.withUnsafeBufferPointer { String(cString: $0.baseAddress!) })]:\(port)"
                }
            }
            return p.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { a -> String in
                var addr = a.pointee.sin_addr
                inet_ntop(AF_INET, &addr, &host, 64)
                return "\(host.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }):\(port)"
            }
        }
    }

    /// Waits up to `timeout` seconds for a connection: the socket, nil when the listening
    /// socket was shut down, or `.timedOut`.
    public enum AcceptResult: Sendable { case accepted(Socket), timedOut, shutDown }
    public func accept(timeout: Double) throws -> AcceptResult {
        var pfd = pollfd(fd: fd.raw, events: Int16(POLLIN), revents: 0)
        let n = poll(&pfd, 1, Int32(timeout * 1000))
        if n < 0 && Glibc.errno != EINTR { throw SyscallError(call: "poll", path: peer, errno: Glibc.errno) }
        if n <= 0 { return .timedOut }
        return try accept().map { .accepted($0) } ?? .shutDown
    }

    /// Accepts one connection; nil when the listening socket was shut down.
    public func accept() throws -> Socket? {
        while true {
            var ss = sockaddr_storage()
            var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
            let raw = withUnsafeMutablePointer(to: &ss) { p in
                p.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.accept(fd.raw, $0, &len) }
            }
            if raw >= 0 {
                _ = fcntl(raw, F_SETFD, FD_CLOEXEC)
                let peer = Self.describe(ss)
                return Socket(fd: OwnedFD(raw, label: peer), peer: peer)
            }
            let e = Glibc.errno
            switch e {
            case EINTR, ECONNABORTED, EPROTO: continue
            case EINVAL, EBADF: return nil  // shut down
            default: throw SyscallError(call: "accept", path: peer, errno: e)
            }
        }
    }

    /// Connects with a deadline.
    public static func connect(_ ep: Endpoint, timeout: Double) throws -> Socket {
        let addrs = try addresses(ep, passive: false)
        var lastError = SyscallError(call: "connect", path: ep.description, errno: EHOSTUNREACH)
        for (family, addr) in addrs {
            let raw = Glibc.socket(family, Int32(SOCK_STREAM.rawValue | SOCK_CLOEXEC.rawValue | SOCK_NONBLOCK.rawValue), 0)
            if raw < 0 { lastError = SyscallError(call: "socket", path: ep.description, errno: Glibc.errno); continue }
            let fd = OwnedFD(raw, label: ep.description)
            let rc = addr.withUnsafeBytes { Glibc.connect(raw, $0.baseAddress!.assumingMemoryBound(to: sockaddr.self), socklen_t(addr.count)) }
            if rc < 0 && Glibc.errno != EINPROGRESS {
                lastError = SyscallError(call: "connect", path: ep.description, errno: Glibc.errno)
                continue
            }
            if rc < 0 {
                var pfd = pollfd(fd: raw, events: Int16(POLLOUT), revents: 0)
                let n = poll(&pfd, 1, Int32(timeout * 1000))
                if n == 0 { lastError = SyscallError(call: "connect", path: ep.description, errno: ETIMEDOUT); continue }
                var err: Int32 = 0
                var len = socklen_t(MemoryLayout<Int32>.size)
                getsockopt(raw, SOL_SOCKET, SO_ERROR, &err, &len)
                if err != 0 { lastError = SyscallError(call: "connect", path: ep.description, errno: err); continue }
            }
            let flags = fcntl(raw, F_GETFL)
            _ = fcntl(raw, F_SETFL, flags & ~O_NONBLOCK)
            let s = Socket(fd: fd, peer: ep.description)
            s.setNoDelay()
            return s
        }
        throw lastError
    }

    public func setNoDelay() {
        var one: Int32 = 1
        setsockopt(fd.raw, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
    }

    /// The receive deadline set last by `setTimeouts` (a read with a deadline puts it back).
    private let receiveTimeout = Mutex<Double>(0)

    /// Sets the receive and send deadlines (seconds; 0 = none).
    public func setTimeouts(receive: Double, send: Double) {
        // A zero timeval means no deadline at all: a deadline that is nearly over (what is
        // left of one, say) must stay a deadline, of at least a millisecond.
        func tv(_ s: Double) -> timeval {
            guard s > 0 else { return timeval(tv_sec: 0, tv_usec: 0) }
            let t = max(s, 0.001)
            return timeval(tv_sec: Int(t), tv_usec: Int((t - Double(Int(t))) * 1e6))
        }
        receiveTimeout.withLock { $0 = receive }
        var r = tv(receive), w = tv(send)
        setsockopt(fd.raw, SOL_SOCKET, SO_RCVTIMEO, &r, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd.raw, SOL_SOCKET, SO_SNDTIMEO, &w, socklen_t(MemoryLayout<timeval>.size))
    }

    public func setBuffers(bytes: Int32) {
        var b = bytes
        setsockopt(fd.raw, SOL_SOCKET, SO_SNDBUF, &b, socklen_t(MemoryLayout<Int32>.size))
        setsockopt(fd.raw, SOL_SOCKET, SO_RCVBUF, &b, socklen_t(MemoryLayout<Int32>.size))
    }

    public func sendAll(_ bytes: [UInt8]) throws {
        var done = 0
        while done < bytes.count {
            let n = bytes.withUnsafeBytes { p in Glibc.send(fd.raw, p.baseAddress! + done, p.count - done, Int32(MSG_NOSIGNAL)) }
            if n < 0 {
                let e = Glibc.errno
                if e == EINTR { continue }
                throw SyscallError(call: "send", path: peer, errno: e == EAGAIN ? ETIMEDOUT : e)
            }
            done += n
        }
    }

    /// Reads what is available, up to `max` bytes; an empty result means the peer closed.
    public func receive(max: Int) throws -> [UInt8] {
        var buf = [UInt8](repeating: 0, count: max)
        while true {
            let n = buf.withUnsafeMutableBytes { Glibc.recv(fd.raw, $0.baseAddress!, max, 0) }
            if n >= 0 { return Array(buf[0..<n]) }
            let e = Glibc.errno
            if e == EINTR { continue }
            throw SyscallError(call: "recv", path: peer, errno: e == EAGAIN ? ETIMEDOUT : e)
        }
    }

    /// Reads exactly `count` bytes; nil when the peer closed before the first byte.
    public func receiveExactly(_ count: Int, deadline: Double? = nil) throws -> [UInt8]? {
        var out = [UInt8](repeating: 0, count: count)
        var done = 0
        if deadline != nil {
            // Usually the whole of it is there already: take it without touching the socket's
            // timeout (two setsockopt calls a frame, four a small file on the collector).
            let n = out.withUnsafeMutableBytes { Glibc.recv(fd.raw, $0.baseAddress!, count, Int32(MSG_DONTWAIT)) }
            if n == count { return out }
            if n > 0 { done = n }
            if n == 0 { return nil }
            if n < 0, Glibc.errno != EAGAIN, Glibc.errno != EINTR {
                throw SyscallError(call: "recv", path: peer, errno: Glibc.errno)
            }
        }
        defer {
            if deadline != nil {
                let r = receiveTimeout.withLock { $0 }
                var tv = timeval(tv_sec: Int(r), tv_usec: Int((r - Double(Int(r))) * 1e6))
                setsockopt(fd.raw, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
            }
        }
        while done < count {
            if let d = deadline {
                // A deadline for the whole read, not for each recv: a peer that sends one
                // byte a second does not keep the read alive.
                var ts = timespec()
                clock_gettime(CLOCK_MONOTONIC, &ts)
                let left = d - (Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9)
                if left <= 0 { throw SyscallError(call: "recv", path: "\(peer) (deadline passed)", errno: ETIMEDOUT) }
                var tv = timeval(tv_sec: Int(left), tv_usec: max(1000, Int((left - Double(Int(left))) * 1e6)))
                setsockopt(fd.raw, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
            }
            let n = out.withUnsafeMutableBytes { Glibc.recv(fd.raw, $0.baseAddress! + done, count - done, 0) }
            if n > 0 { done += n; continue }
            if n == 0 {
                if done == 0 { return nil }
                throw SyscallError(call: "recv", path: "\(peer) (closed mid-frame)", errno: ECONNRESET)
            }
            let e = Glibc.errno
            if e == EINTR { continue }
            throw SyscallError(call: "recv", path: peer, errno: e == EAGAIN ? ETIMEDOUT : e)
        }
        return out
    }

    /// Stops further reads and writes; a thread blocked on this socket wakes up.
    public func shutdown() {
        if fd.isOpen { _ = Glibc.shutdown(fd.raw, Int32(SHUT_RDWR)) }
    }

    /// Closes after a last message: stop sending (FIN), then read and discard what the peer
    /// still sends, for at most `maxBytes` or `timeout` seconds, so that the close does not
    /// turn into a reset that destroys the message before the peer reads it.
    public func lingeringClose(timeout: Double = 1, maxBytes: Int = 1 << 16) {
        guard fd.isOpen else { return }
        _ = Glibc.shutdown(fd.raw, Int32(SHUT_WR))
        setTimeouts(receive: timeout, send: timeout)
        var drained = 0
        var buf = [UInt8](repeating: 0, count: 4096)
        let deadline = monotonicSeconds() + timeout
        while drained < maxBytes && monotonicSeconds() < deadline {
            let n = buf.withUnsafeMutableBytes { Glibc.recv(fd.raw, $0.baseAddress!, $0.count, 0) }
            if n > 0 { drained += n; continue }
            if n < 0 && Glibc.errno == EINTR { continue }
            break
        }
        try? fd.close()
    }

    /// Closes with a reset (SO_LINGER 0) instead of a FIN.
    public func abort() {
        var l = linger(l_onoff: 1, l_linger: 0)
        setsockopt(fd.raw, SOL_SOCKET, SO_LINGER, &l, socklen_t(MemoryLayout<linger>.size))
        try? fd.close()
    }
}

func monotonicSeconds() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}
