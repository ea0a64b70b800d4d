import CSpoolshipLinux
import CSpoolshipOpenSSL
import Foundation
import Glibc

/// A TLS failure: what could not be done (naming the file or the peer), and what OpenSSL's
/// error queue said.
public struct TLSError: Error, CustomStringConvertible, Sendable {
    public var what: String
    public var detail: String
    /// OpenSSL's reason codes (ERR_GET_REASON) of the errors in `detail`.
    public var reasons: [Int32] = []
    public init(_ what: String, detail: String, reasons: [Int32] = []) {
        self.what = what
        self.detail = detail
        self.reasons = reasons
    }
    public var description: String { detail.isEmpty ? what : "\(what): \(detail)" }

    /// OpenSSL's error queue of this thread, emptied, as one line.
    static func queue() -> String { queueWithReasons().text }

    /// The same, and the reason codes of its entries.
    static func queueWithReasons() -> (text: String, reasons: [Int32]) {
        var parts: [String] = []
        var reasons: [Int32] = []
        while true {
            let e = ERR_get_error()
            if e == 0 { break }
            reasons.append(ERR_GET_REASON(e))
            var buf = [CChar](repeating: 0, count: 256)
            ERR_error_string_n(e, &buf, buf.count)
            parts.append(String(decoding: buf.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))
        }
        return (parts.joined(separator: "; "), reasons)
    }
}

/// The client's TLS handshake met a peer that answered in plain text (OpenSSL: "wrong version
/// number"): a collector without TLS. `following` holds what the peer sent after the first
/// five bytes, which OpenSSL took as a record header: a spoolship collector's "SPSH" and the
/// first byte of its ERROR frame's length.
public struct TLSPlainPeer: Error, CustomStringConvertible, Sendable {
    public var peer: String
    public var following: [UInt8]
    public var description: String { "\(peer) answered the TLS handshake in plain text" }
}

/// Whether this kernel can do TLS (kernel TLS, the `tls` module).
public enum KernelTLS {
    /// nil when it can; otherwise why not, in a sentence for an operator.
    public static func unavailableReason() -> String? {
        let e = spsh_kernel_tls_probe()
        if e == 0 || e == ENOTCONN { return nil }
        let ulps = (try? String(contentsOfFile: "/proc/sys/net/ipv4/tcp_available_ulp", encoding: .utf8))?
            .trimmingCharacters(in: .whitespacesAndNewlines) ?? "?"
        if e == ENOENT {
            return "this kernel has no TLS: the tls module is not loaded and could not be (tcp_available_ulp: '\(ulps)'; try modprobe tls; a kernel built without CONFIG_TLS has none)"
        }
        return "could not ask the kernel for TLS: setsockopt(TCP_ULP, \"tls\"): \(String(cString: strerror(e)))"
    }
}

/// The lowest TLS version a side accepts.
public enum TLSVersion: String, Sendable, Equatable, CaseIterable {
    case tls12 = "1.2"
    case tls13 = "1.3"
    var openSSL: Int32 { self == .tls12 ? TLS1_2_VERSION : TLS1_3_VERSION }
}

/// The files of one side: the CA that signs the peers, this side's certificate (chain) and key.
public struct TLSFiles: Sendable, Equatable {
    public var caFile: String
    public var certFile: String
    public var keyFile: String
    public init(caFile: String, certFile: String, keyFile: String) {
        self.caFile = caFile
        self.certFile = certFile
        self.keyFile = keyFile
    }
}

/// One side's TLS settings, loaded and checked: an OpenSSL context from which each
/// connection is made. Mutual TLS always: the server requires a client certificate
/// (`SSL_VERIFY_FAIL_IF_NO_PEER_CERT`), the client verifies the server's certificate and name.
///
/// `@unchecked Sendable`: the `SSL_CTX` is configured in `init` and only read afterwards
/// (`SSL_new`), which OpenSSL allows from any thread.
public final class TLSContext: @unchecked Sendable {
    public enum Role: Sendable, Equatable {
        /// The agent: `serverName` is the name (or IP address) the collector's certificate must
        /// hold.
        case client(serverName: String)
        /// The collector.
        case server
    }

    let ctx: OpaquePointer
    public let role: Role
    public let files: TLSFiles
    /// Whether connections offer their keys to the kernel (kernel TLS) after the handshake.
    public let kernelTLS: Bool

    /// TLS 1.3 suites, AES-128-GCM first: it costs less than AES-256-GCM here for the same class
    /// of security (docs/OPERATIONS.md, "TLS").
    public static let defaultSuites = "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"
    /// TLS 1.2 ciphers: forward-secret AEAD only, in the same order.
    public static let defaultCiphers = "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"

    /// `maxVersion`: the highest TLS version offered or accepted (nil: the highest OpenSSL has).
    public init(role: Role, files: TLSFiles, minVersion: TLSVersion = .tls12, maxVersion: TLSVersion? = nil, kernelTLS: Bool = true,
                suites: String = TLSContext.defaultSuites, ciphers: String = TLSContext.defaultCiphers) throws {
        ERR_clear_error()
        let method = role == .server ? TLS_server_method() : TLS_client_method()
        guard let ctx = SSL_CTX_new(method) else { throw TLSError("cannot make a TLS context", detail: TLSError.queue()) }
        self.ctx = ctx
        self.role = role
        self.files = files
        self.kernelTLS = kernelTLS
        func check(_ ok: Bool, _ what: String) throws {
            if !ok { throw TLSError(what, detail: TLSError.queue()) }
        }
        try check(spsh_ssl_ctx_set_min_proto(ctx, minVersion.openSSL) == 1, "cannot set the lowest TLS version to \(minVersion.rawValue)")
        if let max = maxVersion {
            try check(max.openSSL >= minVersion.openSSL && spsh_ssl_ctx_set_max_proto(ctx, max.openSSL) == 1,
                      "cannot set the highest TLS version to \(max.rawValue) with the lowest at \(minVersion.rawValue)")
        }
        spsh_ssl_ctx_harden(ctx)
        if kernelTLS { spsh_ssl_ctx_enable_ktls(ctx) }
        // Read-ahead, except where the kernel could take the receive keys (the collector, with
        // kernel TLS on a kernel that has it): the agent receives only small frames over TLS.
        if role != .server || !kernelTLS || KernelTLS.unavailableReason() != nil {
            spsh_ssl_ctx_read_ahead(ctx, 64 << 10)
        }
        try check(SSL_CTX_set_ciphersuites(ctx, suites) == 1, "TLS 1.3 suites '\(suites)' are not usable")
        try check(SSL_CTX_set_cipher_list(ctx, ciphers) == 1, "TLS 1.2 ciphers '\(ciphers)' are not usable")
        try check(SSL_CTX_load_verify_locations(ctx, files.caFile, nil) == 1, "cannot read the CA file \(files.caFile)")
        // The key before the certificate: loaded after it, a key that does not match fails as
        // "cannot read", where the check below says what is wrong.
        try check(SSL_CTX_use_PrivateKey_file(ctx, files.keyFile, SSL_FILETYPE_PEM) == 1, "cannot read the key file \(files.keyFile)")
        try check(SSL_CTX_use_certificate_chain_file(ctx, files.certFile) == 1, "cannot read the certificate file \(files.certFile)")
        if SSL_CTX_check_private_key(ctx) != 1 {
            // OpenSSL's own words here ("no private key assigned") would mislead.
            ERR_clear_error()
            throw TLSError("the key in \(files.keyFile) does not belong to the certificate in \(files.certFile)", detail: "")
        }
        let verify = SSL_VERIFY_PEER | (role == .server ? SSL_VERIFY_FAIL_IF_NO_PEER_CERT : 0)
        SSL_CTX_set_verify(ctx, Int32(verify), nil)
    }

    deinit { SSL_CTX_free(ctx) }

    /// This side's certificate: "serial <HEX>, valid until <date>" (for the log at a start and
    /// a reload).
    public var certificateSummary: String {
        var buf = [CChar](repeating: 0, count: 256)
        let n = spsh_ctx_cert_summary(ctx, &buf, Int32(buf.count))
        return n > 0 ? String(decoding: buf.prefix(Int(n)).map { UInt8(bitPattern: $0) }, as: UTF8.self) : "none"
    }

    /// OpenSSL's version, e.g. "OpenSSL 3.0.19 27 Jan 2026".
    public static var libraryVersion: String { String(cString: OpenSSL_version(Int32(OPENSSL_VERSION))) }
    /// Whether this OpenSSL gives the kernel the receive keys of a TLS 1.3 connection (3.2 and
    /// later; 3.0 and 3.1 do it for TLS 1.2 only).
    public static var kernelReceivesTLS13: Bool { OpenSSL_version_num() >= 0x3020_0000 }
}

/// One TLS connection over a `Socket`. The agent's sender and reader (and the collector's
/// reader and durability thread) use one connection from two threads, and an OpenSSL `SSL`
/// must never be used by two threads at once: every OpenSSL call here runs under `lock`, on a
/// non-blocking socket, and the waits for the socket (poll) happen outside the lock, so that a
/// reader waiting for bytes never holds up a writer.
///
/// `@unchecked Sendable`: `ssl` is touched only under `lock`; `kernelSend` and
/// `kernelReceive` are set by `handshake`, before the connection is shared.
public final class TLSConnection: @unchecked Sendable {
    public let socket: Socket
    private let ssl: OpaquePointer
    private let isClient: Bool
    private let lock = NSLock()
    /// Whether the kernel encrypts what this side sends (kernel TLS), and decrypts what it
    /// receives.
    public private(set) var kernelSend = false
    public private(set) var kernelReceive = false

    public init(_ context: TLSContext, socket: Socket) throws {
        ERR_clear_error()
        guard let ssl = SSL_new(context.ctx) else { throw TLSError("cannot make a TLS connection", detail: TLSError.queue()) }
        self.ssl = ssl
        self.socket = socket
        isClient = context.role != .server
        guard SSL_set_fd(ssl, socket.fd.raw) == 1 else { throw TLSError("cannot attach TLS to the socket", detail: TLSError.queue()) }
        let flags = fcntl(socket.fd.raw, F_GETFL)
        _ = fcntl(socket.fd.raw, F_SETFL, flags | O_NONBLOCK)
        switch context.role {
        case .server:
            SSL_set_accept_state(ssl)
        case .client(let name):
            SSL_set_connect_state(ssl)
            if Self.isIPAddress(name) {
                X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), name)
            } else {
                _ = spsh_ssl_set_sni(ssl, name)
                SSL_set1_host(ssl, name)
            }
        }
    }

    deinit {
        SSL_free(ssl)
        scratch?.deallocate()
    }

    /// The buffer of `sendFile` (the agent's sender) and `receive(into:)` (the collector's
    /// reader), 256 KiB, made at its first use and kept: one made for each file would be an
    /// mmap and its page faults per file (above malloc's mmap threshold). Each of the two is
    /// called by one thread; `scratchLock` holds while one runs.
    private var scratch: UnsafeMutableRawBufferPointer?
    private let scratchLock = NSLock()
    static let scratchSize = 256 << 10

    private func withScratch<R>(_ body: (UnsafeMutableRawBufferPointer) throws -> R) rethrows -> R {
        scratchLock.lock()
        defer { scratchLock.unlock() }
        if scratch == nil { scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: Self.scratchSize, alignment: 64) }
        return try body(scratch!)
    }

    static func isIPAddress(_ s: String) -> Bool {
        var a4 = in_addr(), a6 = in6_addr()
        return inet_pton(AF_INET, s, &a4) == 1 || inet_pton(AF_INET6, s, &a6) == 1
    }

    /// Runs the handshake, until `deadline` (monotonic seconds). A peer that fails to verify
    /// gets the alert, and the error says why (OpenSSL's verify result: an unknown CA, an
    /// expired certificate, a name that does not match).
    ///
    /// A client whose peer answers in plain text gets `TLSPlainPeer`, with what the peer sent.
    public func handshake(deadline: Double) throws {
        do {
            _ = try call("TLS handshake with \(socket.peer)", deadline: deadline) { SSL_do_handshake(ssl) }
        } catch let e as TLSError where isClient && e.reasons.contains(SSL_R_WRONG_VERSION_NUMBER) {
            throw TLSPlainPeer(peer: socket.peer, following: readWhatFollows(deadline: min(deadline, monotonicSeconds() + 2)))
        }
        kernelSend = spsh_ktls_send(ssl) == 1
        kernelReceive = spsh_ktls_recv(ssl) == 1
    }

    /// What the peer still sends, until it closes, 64 KiB or `deadline`, straight from the
    /// socket (after a failed handshake; the peer's plain-text answer).
    private func readWhatFollows(deadline: Double) -> [UInt8] {
        var out: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 4096)
        while out.count < 65536 {
            let left = deadline - monotonicSeconds()
            if left <= 0 { break }
            var p = pollfd(fd: socket.fd.raw, events: Int16(POLLIN), revents: 0)
            let r = poll(&p, 1, Int32(left * 1000) + 1)
            if r < 0 && Glibc.errno == EINTR { continue }
            if r <= 0 { break }
            let n = buf.withUnsafeMutableBytes { Glibc.recv(socket.fd.raw, $0.baseAddress!, $0.count, Int32(MSG_DONTWAIT)) }
            if n < 0 && (Glibc.errno == EINTR || Glibc.errno == EAGAIN) { continue }
            if n <= 0 { break }
            out += buf[0..<n]
        }
        return out
    }

    /// Whether OpenSSL holds bytes already read from the socket and not yet handed out.
    public var hasPending: Bool {
        lock.lock()
        defer { lock.unlock() }
        return SSL_has_pending(ssl) == 1
    }

    /// Receives exactly `count` bytes into `file` at `offset`, as `Splicer.receive` does on a
    /// plain socket: with kernel TLS receive (and nothing left in OpenSSL's buffer), spliced
    /// from the socket, the kernel decrypting; otherwise `SSL_read` into a buffer and
    /// `pwrite`. `idle`: seconds a read may wait for the peer (0: no limit). `progress` is
    /// called with the file offset reached after each chunk lands in the file.
    public func receive(into file: OwnedFD, at offset: Int64, count: Int64, idle: Double, splicer: Splicer,
                        progress: (Int64) -> Void) throws {
        let deadline = { idle > 0 ? monotonicSeconds() + idle : .infinity }
        try withScratch { buf in
            /// Up to `max` bytes into the buffer and from there into the file at `at`: one
            /// SSL_read that waits, then more that do not (OpenSSL hands out one record of at
            /// most 16 KiB at a time), so that the file takes one write per buffer, not one per
            /// record. Returns the bytes written.
            func readOnce(at: Int64, max: Int64) throws -> Int64 {
                let want = Int(min(Int64(buf.count), max))
                var filled = 0
                while filled < want {
                    var got = 0
                    let r = try call("TLS read from \(socket.peer)", deadline: filled == 0 ? deadline() : 0, closedIsZero: true,
                                     wouldBlockIsZero: filled > 0) {
                        SSL_read_ex(ssl, buf.baseAddress! + filled, want - filled, &got) == 1 ? 1 : 0
                    }
                    if r == 0 {
                        if filled > 0 { break }  // nothing more now; what came is written first
                        throw SyscallError(call: "TLS read", path: "\(socket.peer) (peer closed with \(max) bytes of the frame unsent)", errno: ECONNRESET)
                    }
                    filled += got
                }
                var done = 0
                while done < filled {
                    let n = pwrite(file.raw, buf.baseAddress! + done, filled - done, off_t(at) + off_t(done))
                    if n < 0 {
                        if Glibc.errno == EINTR { continue }
                        throw SyscallError(call: "pwrite", path: file.label, errno: Glibc.errno)
                    }
                    done += n
                }
                return Int64(filled)
            }
            if kernelReceive && !hasPending {
                try splicer.move(from: socket.fd.raw, label: socket.peer, into: file, at: offset, count: count,
                                 blocked: { try self.wait(forReading: true, deadline: deadline(), what: "TLS splice from \(self.socket.peer)") },
                                 notData: { at, max in try readOnce(at: at, max: max) },
                                 progress: progress)
                return
            }
            var at = offset
            while at < offset + count {
                at += try readOnce(at: at, max: offset + count - at)
                progress(at)
            }
        }
    }

    /// The TLS version and cipher agreed, e.g. "TLSv1.3 TLS_AES_128_GCM_SHA256".
    public var agreed: String {
        lock.lock()
        defer { lock.unlock() }
        let version = String(cString: SSL_get_version(ssl))
        let cipher = SSL_get_current_cipher(ssl).map { String(cString: SSL_CIPHER_get_name($0)) } ?? "?"
        return "\(version) \(cipher)"
    }

    /// The peer certificate's subjectAltName entries of type DNS and URI (never the CN).
    public func peerNames() -> [String] {
        lock.lock()
        defer { lock.unlock() }
        var buf = [CChar](repeating: 0, count: 8192)
        let n = spsh_peer_sans(ssl, &buf, buf.count)
        guard n > 0 else { return [] }
        return buf[0..<n].split(separator: 0, omittingEmptySubsequences: true).map {
            String(decoding: $0.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        }
    }

    /// Reads what is there, up to `max` bytes, waiting until `deadline` (monotonic seconds;
    /// then a `SyscallError` with ETIMEDOUT, as a plain socket's receive). Empty: the peer
    /// closed.
    public func receive(max: Int, deadline: Double) throws -> [UInt8] {
        var buf = [UInt8](repeating: 0, count: max)
        var got = 0
        let n = try buf.withUnsafeMutableBytes { p in
            try call("TLS read from \(socket.peer)", deadline: deadline, closedIsZero: true) {
                SSL_read_ex(ssl, p.baseAddress, max, &got) == 1 ? 1 : 0
            }
        }
        return n == 0 ? [] : Array(buf[0..<got])
    }

    /// Sends every byte, waiting until `deadline` for room.
    public func sendAll(_ bytes: [UInt8], deadline: Double) throws {
        try bytes.withUnsafeBytes { try write($0, deadline: deadline) }
    }

    /// Sends every byte of `p`, waiting until `deadline` for room.
    private func write(_ p: UnsafeRawBufferPointer, deadline: Double) throws {
        var done = 0
        while done < p.count {
            var wrote = 0
            _ = try call("TLS write to \(socket.peer)", deadline: deadline) {
                SSL_write_ex(ssl, p.baseAddress! + done, p.count - done, &wrote) == 1 ? 1 : 0
            }
            done += wrote
        }
    }

    /// Sends `count` bytes of `fd` from `offset`: with kernel TLS, `SSL_sendfile` (the page
    /// cache straight into the kernel's encryption); without it, `pread` into a buffer of
    /// 256 KiB and `SSL_write`.
    public func sendFile(_ fd: OwnedFD, offset: Int64, count: Int64, deadline: Double) throws {
        var sent: Int64 = 0
        if kernelSend {
            while sent < count {
                let n = try call("TLS sendfile to \(socket.peer)", deadline: deadline) {
                    Int32(clamping: SSL_sendfile(ssl, fd.raw, off_t(offset + sent), Int(min(count - sent, 1 << 30)), 0))
                }
                sent += Int64(n)
            }
            return
        }
        try withScratch { buf in
            while sent < count {
                let want = Int(min(Int64(buf.count), count - sent))
                let n = try syscall("pread", fd.label) { pread(fd.raw, buf.baseAddress, want, off_t(offset + sent)) }
                if n == 0 { throw SyscallError(call: "pread", path: "\(fd.label): ended before \(count) bytes", errno: EIO) }
                try write(UnsafeRawBufferPointer(rebasing: buf[0..<n]), deadline: deadline)
                sent += Int64(n)
            }
        }
    }

    /// Sends close_notify (best effort, not waiting for the peer's).
    public func close() {
        lock.lock()
        _ = SSL_shutdown(ssl)
        lock.unlock()
    }

    /// One OpenSSL call, retried until it completes or `deadline` passes: the call (and the
    /// reading of its error) under `lock`, the wait for the socket outside it. Returns the
    /// call's positive result (0 when `closedIsZero` and the peer closed).
    /// `wouldBlockIsZero`: return 0 at once when the call would wait for the socket.
    private func call(_ what: String, deadline: Double, closedIsZero: Bool = false, wouldBlockIsZero: Bool = false,
                      _ body: () -> Int32) throws -> Int32 {
        while true {
            lock.lock()
            ERR_clear_error()
            let r = body()
            let err = r > 0 ? SSL_ERROR_NONE : SSL_get_error(ssl, r)
            let (detail, reasons) = r > 0 ? ("", []) : TLSError.queueWithReasons()
            let sysErrno = Glibc.errno
            var verify = ""
            if err == SSL_ERROR_SSL, SSL_get_verify_result(ssl) != X509_V_OK {
                verify = String(cString: X509_verify_cert_error_string(SSL_get_verify_result(ssl)))
            }
            lock.unlock()
            switch err {
            case SSL_ERROR_NONE:
                return r
            case SSL_ERROR_ZERO_RETURN:
                if closedIsZero { return 0 }
                throw TLSError("\(what): the peer closed the connection", detail: "")
            case SSL_ERROR_WANT_READ, SSL_ERROR_WANT_WRITE:
                if wouldBlockIsZero { return 0 }
                try wait(forReading: err == SSL_ERROR_WANT_READ, deadline: deadline, what: what)
            case SSL_ERROR_SSL where reasons.contains(SSL_R_UNEXPECTED_EOF_WHILE_READING):
                // The peer closed without close_notify (killed, or cut): a close like any other.
                // The frames say whether anything was cut short.
                if closedIsZero { return 0 }
                throw TLSError("\(what): the peer closed the connection", detail: "")
            case SSL_ERROR_SYSCALL:
                if detail.isEmpty && sysErrno == 0 {
                    if closedIsZero { return 0 }
                    throw TLSError("\(what): the peer closed the connection", detail: "")
                }
                if sysErrno != 0 { throw SyscallError(call: what, path: nil, errno: sysErrno) }
                throw TLSError(what, detail: detail, reasons: reasons)
            default:
                throw TLSError(what, detail: verify.isEmpty ? detail : "certificate verify failed: \(verify)", reasons: reasons)
            }
        }
    }

    private func wait(forReading: Bool, deadline: Double, what: String) throws {
        while true {
            let left = deadline - monotonicSeconds()
            if left <= 0 { throw SyscallError(call: what, path: nil, errno: ETIMEDOUT) }
            var p = pollfd(fd: socket.fd.raw, events: Int16(forReading ? POLLIN : POLLOUT), revents: 0)
            let r = poll(&p, 1, Int32(min(left, 3600) * 1000) + 1)
            if r > 0 { return }
            if r < 0 && Glibc.errno != EINTR { throw SyscallError(call: "poll", path: socket.peer, errno: Glibc.errno) }
        }
    }
}
