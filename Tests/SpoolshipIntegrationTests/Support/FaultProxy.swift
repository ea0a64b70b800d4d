import Foundation
import Glibc

/// A thread-based TCP proxy on 127.0.0.1 that forwards to `127.0.0.1:targetPort`, for fault-injection tests.
///
/// Blocking sockets, one plain `Thread` per direction per connection, all shared state behind one lock.
/// Reads wait in `poll` with a short timeout and sends carry `SO_SNDTIMEO`, so every pump thread notices
/// `stop()`/`resetAll()` promptly even when it is not woken by `shutdown`.
///
/// Connection teardown never closes a descriptor another thread may still be using: the fds of a
/// connection are closed only once both of its pump threads have exited (a blackholed connection keeps
/// them open until `resetAll()`/`stop()`).
///
/// `@unchecked Sendable`: every `var` of the proxy and of its connections is read and written only
/// with `cond` held (a condition, not a `Mutex`: `stop()` and `resetAll()` wait on it for the pump
/// threads); the rest is `let`.
final class FaultProxy: @unchecked Sendable {
    enum Fault: Sendable { case none, resetAfter(bytes: Int), closeAfter(bytes: Int), blackholeAfter(bytes: Int) }

    struct SocketError: Error, CustomStringConvertible {
        let call: String
        let code: Int32
        var description: String { "FaultProxy: \(call) failed: \(String(cString: strerror(code))) (errno \(code))" }
    }

    /// The bound port agents connect to.
    let port: UInt16
    let targetPort: UInt16

    private let listenFD: Int32
    private let cond = NSCondition()  // the one lock; also signalled whenever a thread exits or a connection closes

    // Everything below is guarded by `cond`.
    private var _bytesFromClient = 0
    private var _bytesToClient = 0
    private var _connections = 0
    private var fault: Fault = .none
    private var faultBudget: Int?
    private var sliceMax: Int?
    private var rng = Harness.SplitMix64(seed: 0)
    private var stopped = false
    private var live: [Int: Connection] = [:]
    private var liveThreads = 0
    private var nextID = 0

    private static let bufferSize = 64 * 1024
    private static let pollMillis: Int32 = 50

    init(targetPort: UInt16) throws {
        self.targetPort = targetPort
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw SocketError(call: "socket", code: errno) }
        var one: Int32 = 1
        _ = setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        var addr = Self.loopback(port: 0)
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        guard rc == 0 else { let e = errno; close(fd); throw SocketError(call: "bind", code: e) }
        guard listen(fd, 128) == 0 else { let e = errno; close(fd); throw SocketError(call: "listen", code: e) }
        var bound = sockaddr_in()
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        let grc = withUnsafeMutablePointer(to: &bound) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) }
        }
        guard grc == 0 else { let e = errno; close(fd); throw SocketError(call: "getsockname", code: e) }
        listenFD = fd
        port = UInt16(bigEndian: bound.sin_port)

        cond.lock()
        liveThreads += 1
        cond.unlock()
        let t = Thread { [self] in
            self.acceptLoop()
            self.threadExited()
        }
        t.name = "FaultProxy.accept:\(port)"
        t.start()
    }

    deinit { stop() }

    // MARK: - Public API

    /// Total bytes written to the target (client->target), over all connections.
    var bytesFromClient: Int { cond.lock(); defer { cond.unlock() }; return _bytesFromClient }
    /// Total bytes written to clients (target->client), over all connections.
    var bytesToClient: Int { cond.lock(); defer { cond.unlock() }; return _bytesToClient }
    /// Connections accepted so far.
    var connections: Int { cond.lock(); defer { cond.unlock() }; return _connections }
    /// Connections not yet closed (including blackholed ones).
    var liveConnections: Int { cond.lock(); defer { cond.unlock() }; return live.count }

    /// The fault applied to each connection accepted after this call (counted on that connection's
    /// client->target bytes).
    func setFault(_ f: Fault) {
        cond.lock(); defer { cond.unlock() }
        fault = f
        faultBudget = nil
    }

    /// The fault applied to the next `connections` connections only; later ones run clean.
    func setFault(_ f: Fault, connections: Int) {
        cond.lock(); defer { cond.unlock() }
        fault = f
        faultBudget = connections
    }

    /// Forward client->target data in chunks of random size in 1...maxSlice, one `send` per chunk
    /// (TCP_NODELAY is on, so each chunk leaves as its own segment). nil = off. Applies at once, to live
    /// connections too; the PRNG is shared by all connections.
    func setSlicing(maxSlice: Int?, seed: UInt64) {
        cond.lock(); defer { cond.unlock() }
        if let m = maxSlice { precondition(m >= 1, "maxSlice must be >= 1") }
        sliceMax = maxSlice
        rng = Harness.SplitMix64(seed: seed)
    }

    /// RST every live connection now (both sides). Returns once they are closed (bounded: 2 s).
    func resetAll() {
        cond.lock(); defer { cond.unlock() }
        let victims = Array(live.values)
        for c in victims { abortLocked(c) }
        let deadline = Date(timeIntervalSinceNow: 2)
        while victims.contains(where: { !$0.closed }) && cond.wait(until: deadline) {}
    }

    /// Close the listener and RST all connections; waits (bounded: 2 s) for every proxy thread to exit.
    /// Safe to call more than once.
    func stop() {
        cond.lock(); defer { cond.unlock() }
        if !stopped {
            stopped = true
            _ = shutdown(listenFD, Int32(SHUT_RDWR))  // wakes accept (the poll timeout is the fallback)
        }
        for c in Array(live.values) { abortLocked(c) }
        let deadline = Date(timeIntervalSinceNow: 2)
        while liveThreads > 0 && cond.wait(until: deadline) {}
    }

    // MARK: - Connections

    /// `@unchecked Sendable`: its `var`s are the proxy's, under the proxy's `cond` (see above).
    private final class Connection: @unchecked Sendable {
        enum State { case open, blackholed, closing }
        let id: Int
        let client: Int32
        let target: Int32
        let fault: Fault
        // Guarded by the proxy's lock:
        var forwarded = 0  // client->target bytes written on this connection
        var state = State.open
        var threads = 2
        var closed = false
        init(id: Int, client: Int32, target: Int32, fault: Fault) {
            self.id = id
            self.client = client
            self.target = target
            self.fault = fault
        }
    }

    private enum Direction { case toTarget, toClient }

    private func acceptLoop() {
        while true {
            cond.lock()
            let isStopped = stopped
            cond.unlock()
            if isStopped { break }

            var pfd = pollfd(fd: listenFD, events: Int16(POLLIN), revents: 0)
            let pr = poll(&pfd, 1, Self.pollMillis)
            if pr == 0 { continue }
            if pr < 0 { if errno == EINTR { continue }; usleep(10_000); continue }

            let fd = Self.acceptCloexec(listenFD)
            if fd < 0 {
                let e = errno
                if e == EINTR || e == EAGAIN || e == EWOULDBLOCK || e == ECONNABORTED { continue }
                usleep(10_000)  // EINVAL after shutdown (loop re-checks `stopped`), EMFILE, ...
                continue
            }

            cond.lock()
            if stopped {
                cond.unlock()
                Self.setLingerZero(fd)
                close(fd)
                break
            }
            _connections += 1
            let connFault = fault
            if let b = faultBudget {
                faultBudget = b - 1
                if b - 1 <= 0 { fault = .none; faultBudget = nil }
            }
            let id = nextID
            nextID += 1
            cond.unlock()

            guard let target = Self.connectTarget(targetPort) else {
                // Target is down: the client sees a reset, much like a refused connection.
                Self.setLingerZero(fd)
                close(fd)
                continue
            }
            Self.configure(fd)
            Self.configure(target)

            let c = Connection(id: id, client: fd, target: target, fault: connFault)
            cond.lock()
            if stopped {
                cond.unlock()
                Self.setLingerZero(fd)
                Self.setLingerZero(target)
                close(fd)
                close(target)
                break
            }
            live[id] = c
            liveThreads += 2
            cond.unlock()

            let up = Thread { [self] in
                self.pump(c, .toTarget)
                self.threadExited()
            }
            up.name = "FaultProxy.c2t#\(id)"
            let down = Thread { [self] in
                self.pump(c, .toClient)
                self.threadExited()
            }
            down.name = "FaultProxy.t2c#\(id)"
            up.start()
            down.start()
        }
        close(listenFD)
    }

    private func threadExited() {
        cond.lock()
        liveThreads -= 1
        cond.broadcast()
        cond.unlock()
    }

    /// One direction of one connection. Exits (without touching fds itself) when the connection stops
    /// being `.open`; the last of the two threads to exit closes the fds, unless blackholed.
    private func pump(_ c: Connection, _ dir: Direction) {
        let src = dir == .toTarget ? c.client : c.target
        let dst = dir == .toTarget ? c.target : c.client
        let buf = UnsafeMutableRawPointer.allocate(byteCount: Self.bufferSize, alignment: 16)
        defer {
            buf.deallocate()
            cond.lock()
            c.threads -= 1
            if c.threads == 0 && c.state != .blackholed { closeLocked(c) }
            cond.unlock()
        }

        while true {
            // How much may we read? (The fault limit caps reads so no byte past N is ever taken.)
            cond.lock()
            if c.state != .open { cond.unlock(); return }
            var want = Self.bufferSize
            if dir == .toTarget, let limit = c.fault.limit {
                let remaining = limit - c.forwarded
                if remaining <= 0 {
                    cond.unlock()
                    applyFault(c)
                    return
                }
                want = min(want, remaining)
            }
            cond.unlock()

            var pfd = pollfd(fd: src, events: Int16(POLLIN), revents: 0)
            let pr = poll(&pfd, 1, Self.pollMillis)
            if pr == 0 { continue }
            if pr < 0 {
                if errno == EINTR { continue }
                abort(c)
                return
            }

            let n = recv(src, buf, want, 0)
            if n == 0 {
                // Orderly EOF from src: half-close towards dst, keep the other direction running.
                cond.lock()
                if c.state == .open { _ = shutdown(dst, Int32(SHUT_WR)) }
                cond.unlock()
                return
            }
            if n < 0 {
                let e = errno
                if e == EINTR || e == EAGAIN || e == EWOULDBLOCK { continue }
                abort(c)
                return
            }

            var off = 0
            while off < n {
                var chunk = n - off
                if dir == .toTarget {
                    cond.lock()
                    if let m = sliceMax { chunk = min(chunk, 1 + Int(rng.next() % UInt64(m))) }
                    cond.unlock()
                }
                guard sendAll(c, dst, buf + off, chunk, dir) else { return }
                off += chunk
            }
        }
    }

    /// Writes all `len` bytes unless the connection leaves `.open` or errors; counts exactly what `send`
    /// accepted. Returns false if the pump should stop.
    private func sendAll(_ c: Connection, _ fd: Int32, _ p: UnsafeMutableRawPointer, _ len: Int, _ dir: Direction) -> Bool {
        var sent = 0
        while sent < len {
            cond.lock()
            let st = c.state
            cond.unlock()
            if st != .open { return false }

            let k = send(fd, p + sent, len - sent, Int32(MSG_NOSIGNAL))
            if k > 0 {
                cond.lock()
                if dir == .toTarget {
                    c.forwarded += k
                    _bytesFromClient += k
                } else {
                    _bytesToClient += k
                }
                cond.unlock()
                sent += k
                continue
            }
            let e = errno
            if k < 0 && (e == EINTR || e == EAGAIN || e == EWOULDBLOCK) { continue }  // SO_SNDTIMEO tick
            abort(c)
            return false
        }
        return true
    }

    /// Called on the client->target thread once exactly `limit` bytes of `c` have been written to the target.
    private func applyFault(_ c: Connection) {
        switch c.fault {
        case .none:
            return
        case .blackholeAfter:
            cond.lock()
            if c.state == .open { c.state = .blackholed }
            cond.unlock()
        case .resetAfter, .closeAfter:
            cond.lock()
            guard c.state == .open else { cond.unlock(); return }
            c.state = .closing  // the other direction stops forwarding now
            cond.unlock()
            // Let the N bytes actually leave our send queue first: an abortive close (or a close with
            // unread data) would discard them, and the target must see exactly N bytes.
            Self.waitSendQueueEmpty(c.target, timeout: 2)
            cond.lock()
            if case .resetAfter = c.fault {
                abortLocked(c)
            } else if !c.closed {
                _ = shutdown(c.client, Int32(SHUT_RDWR))  // FIN both ways; wakes the other pump
                _ = shutdown(c.target, Int32(SHUT_RDWR))
            }
            cond.unlock()
        }
    }

    private func abort(_ c: Connection) {
        cond.lock()
        abortLocked(c)
        cond.unlock()
    }

    /// RST both sides: linger {1,0} and wake both pumps; the close (which emits the RST) happens when the
    /// last pump exits, or right here if none is left (blackholed).
    private func abortLocked(_ c: Connection) {
        guard !c.closed else { return }
        Self.setLingerZero(c.client)
        Self.setLingerZero(c.target)
        _ = shutdown(c.client, Int32(SHUT_RD))  // SHUT_RD sends nothing on the wire, but wakes readers
        _ = shutdown(c.target, Int32(SHUT_RD))
        c.state = .closing
        if c.threads == 0 { closeLocked(c) }
    }

    private func closeLocked(_ c: Connection) {
        guard !c.closed else { return }
        c.closed = true
        close(c.client)
        close(c.target)
        live[c.id] = nil
        cond.broadcast()
    }

    // MARK: - Socket helpers

    private static func loopback(port: UInt16) -> sockaddr_in {
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = port.bigEndian
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        return addr
    }

    private static func connectTarget(_ port: UInt16) -> Int32? {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return nil }
        var addr = loopback(port: port)
        while true {
            let rc = withUnsafePointer(to: &addr) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
                }
            }
            if rc == 0 { return fd }
            if errno == EINTR { continue }  // (loopback connect completes or fails at once)
            close(fd)
            return nil
        }
    }

    private typealias Accept4 = @convention(c) (Int32, UnsafeMutablePointer<sockaddr>?, UnsafeMutablePointer<socklen_t>?, Int32) -> Int32

    /// accept4 (hidden by Swift's Glibc module: it needs _GNU_SOURCE), looked up at run time.
    private static let accept4Fn: Accept4? = {
        guard let sym = dlsym(nil, "accept4") else { return nil }
        return unsafeBitCast(sym, to: Accept4.self)
    }()

    /// accept with close-on-exec set atomically, so child processes the tests spawn (agents, collectors)
    /// never inherit proxy sockets (an inherited copy would keep a "closed" connection alive).
    private static func acceptCloexec(_ listenFD: Int32) -> Int32 {
        if let accept4 = accept4Fn {
            return accept4(listenFD, nil, nil, Int32(SOCK_CLOEXEC.rawValue))
        }
        let fd = accept(listenFD, nil, nil)
        if fd >= 0 { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        return fd
    }

    private static func configure(_ fd: Int32) {
        var one: Int32 = 1
        _ = setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        var tv = timeval(tv_sec: 0, tv_usec: 100_000)
        _ = setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }

    private static func setLingerZero(_ fd: Int32) {
        var lg = linger(l_onoff: 1, l_linger: 0)
        _ = setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, socklen_t(MemoryLayout<linger>.size))
    }

    /// Polls SIOCOUTQ (== TIOCOUTQ: bytes not yet acknowledged by the peer) until 0 or `timeout`.
    private static func waitSendQueueEmpty(_ fd: Int32, timeout: Double) {
        let deadline = Date(timeIntervalSinceNow: timeout)
        while Date() < deadline {
            var outq: Int32 = 0
            guard ioctl(fd, UInt(TIOCOUTQ), &outq) == 0, outq > 0 else { return }
            usleep(1_000)
        }
    }
}

extension FaultProxy.Fault {
    /// Client->target byte count after which the fault fires; nil for `.none`.
    fileprivate var limit: Int? {
        switch self {
        case .none: return nil
        case .resetAfter(let n), .closeAfter(let n), .blackholeAfter(let n): return max(0, n)
        }
    }
}
