import Glibc
import Synchronization

/// A connection to the peer as both daemons use it: plain TCP, or TLS over it. Plain TCP
/// keeps the zero-copy path (`sendfile` on the agent, `splice` on the collector); TLS sends
/// with `SSL_sendfile` where the kernel took the keys (kernel TLS) and with `pread` +
/// `SSL_write` where not, and receives by splicing from the socket or with `SSL_read` +
/// `pwrite` (`TLSConnection`).
///
/// Timeouts are a plain socket's (SO_RCVTIMEO, SO_SNDTIMEO: each call may wait that long);
/// over TLS the same figures become a deadline for each call. A thread blocked on the link
/// wakes at `shutdown`, as on a plain socket.
public final class Link: Sendable {
    public let socket: Socket
    public let tls: TLSConnection?
    private let timeouts = Mutex<(receive: Double, send: Double)>((0, 0))

    public init(plain socket: Socket) {
        self.socket = socket
        tls = nil
    }

    /// Over `tls`, whose handshake is over.
    public init(tls: TLSConnection) {
        socket = tls.socket
        self.tls = tls
    }

    public var peer: String { socket.peer }

    /// The way the payload goes, in one word for the metrics and the status: `tcp` (plain,
    /// zero-copy), `ktls` (TLS, the kernel encrypting what this side moves: the agent's sends,
    /// the collector's receives) or `tls` (TLS in user space).
    public enum Path: String, Sendable, CaseIterable {
        case tcp, tls, ktls
    }

    /// The path of what this side sends (the agent) or receives (the collector).
    public func path(sending: Bool) -> Path {
        guard let t = tls else { return .tcp }
        return (sending ? t.kernelSend : t.kernelReceive) ? .ktls : .tls
    }

    /// The whole of it, for the log line at connect and the status: "plain TCP (sendfile,
    /// splice)", or e.g. "TLSv1.3 TLS_AES_128_GCM_SHA256; kernel TLS: send".
    public var transport: String {
        guard let t = tls else { return "plain TCP (sendfile, splice)" }
        let kernel: String
        switch (t.kernelSend, t.kernelReceive) {
        case (true, true): kernel = "kernel TLS: send and receive"
        case (true, false): kernel = "kernel TLS: send; receive in user space"
        case (false, true): kernel = "kernel TLS: receive; send in user space"
        case (false, false): kernel = "no kernel TLS: user space both ways"
        }
        return "\(t.agreed); \(kernel)"
    }

    /// Sets the receive and send timeouts (seconds; 0 = none).
    public func setTimeouts(receive: Double, send: Double) {
        timeouts.withLock { $0 = (receive, send) }
        socket.setTimeouts(receive: receive, send: send)
    }

    private func deadline(_ seconds: Double) -> Double {
        seconds > 0 ? monotonicSeconds() + seconds : .infinity
    }
    private var receiveDeadline: Double { deadline(timeouts.withLock { $0.receive }) }
    private var sendDeadline: Double { deadline(timeouts.withLock { $0.send }) }

    public func sendAll(_ bytes: [UInt8]) throws {
        if let t = tls { try t.sendAll(bytes, deadline: sendDeadline) } else { try socket.sendAll(bytes) }
    }

    /// Reads what is available, up to `max` bytes; empty when the peer closed. A timeout is a
    /// `SyscallError` with ETIMEDOUT.
    public func receive(max: Int) throws -> [UInt8] {
        if let t = tls { return try t.receive(max: max, deadline: receiveDeadline) }
        return try socket.receive(max: max)
    }

    /// Reads exactly `count` bytes, by `deadline` if given (monotonic seconds, for the whole
    /// read), else within the receive timeout; nil when the peer closed before the first byte.
    public func receiveExactly(_ count: Int, deadline: Double? = nil) throws -> [UInt8]? {
        guard let t = tls else { return try socket.receiveExactly(count, deadline: deadline) }
        let until = deadline ?? receiveDeadline
        var out: [UInt8] = []
        out.reserveCapacity(count)
        while out.count < count {
            let got = try t.receive(max: count - out.count, deadline: until)
            if got.isEmpty {
                if out.isEmpty { return nil }
                throw SyscallError(call: "TLS read", path: "\(peer) (closed mid-frame)", errno: ECONNRESET)
            }
            out += got
        }
        return out
    }

    /// Sends `count` bytes of `file` from `offset`: sendfile on plain TCP, `TLSConnection.sendFile`
    /// over TLS (within the send timeout).
    public func sendFile(_ file: OwnedFD, offset: Int64, count: Int64) throws {
        if let t = tls {
            try t.sendFile(file, offset: offset, count: count, deadline: sendDeadline)
        } else {
            try ZeroCopy.sendFile(file, offset: offset, count: count, to: socket)
        }
    }

    /// Receives exactly `count` bytes into `file` at `offset` (`Splicer.receive` on plain TCP,
    /// `TLSConnection.receive(into:)` over TLS, each read within the receive timeout).
    public func receiveFile(into file: OwnedFD, at offset: Int64, count: Int64, splicer: Splicer,
                            progress: (Int64) -> Void) throws {
        if let t = tls {
            try t.receive(into: file, at: offset, count: count, idle: timeouts.withLock { $0.receive },
                          splicer: splicer, progress: progress)
        } else {
            try splicer.receive(from: socket, into: file, at: offset, count: count, progress: progress)
        }
    }

    /// Stops further reads and writes; a thread blocked on this link wakes up.
    public func shutdown() { socket.shutdown() }

    /// Closes after a last message (`Socket.lingeringClose`); over TLS, a close_notify first.
    public func lingeringClose() {
        guard socket.fd.isOpen else { return }
        if let t = tls {
            t.close()
            // The TLS connection made the socket non-blocking; the drain waits.
            let flags = fcntl(socket.fd.raw, F_GETFL)
            _ = fcntl(socket.fd.raw, F_SETFL, flags & ~O_NONBLOCK)
        }
        socket.lingeringClose()
    }
}
