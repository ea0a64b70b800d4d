import Foundation
import Glibc
import Synchronization

/// Plays the service manager's side of sd_notify(3): a datagram socket at a path, given to a
/// daemon as NOTIFY_SOCKET, that records every message it receives, in order.
///
/// Sendable (checked): a thread of its own receives; what it received, and whether the socket
/// was closed, are behind a `Mutex`.
final class NotifySocket: Sendable {
    let path: String
    private let fd: Int32
    private let state = Mutex<(messages: [(time: Double, text: String)], closed: Bool)>(([], false))

    convenience init(dir: URL) throws {
        try self.init(path: dir.appendingPathComponent("notify.sock").path)
    }

    /// A datagram socket bound at `path` (journald's native socket is one too).
    init(path: String) throws {
        self.path = path
        fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue | SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw TestFailure("socket: \(errno)") }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: addr.sun_path) else { throw TestFailure("socket path too long: \(path)") }
        withUnsafeMutableBytes(of: &addr.sun_path) { p in
            for (i, b) in bytes.enumerated() { p[i] = b }
            p[bytes.count] = 0
        }
        let rc = withUnsafePointer(to: &addr) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard rc == 0 else { throw TestFailure("bind \(path): \(errno)") }
        var tv = timeval(tv_sec: 0, tv_usec: 200_000)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        let t = Thread { [self] in
            var buf = [UInt8](repeating: 0, count: 4096)
            while !isClosed {
                let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress!, $0.count, 0) }
                if n > 0 {
                    let text = String(decoding: buf[0..<n], as: UTF8.self)
                    state.withLock { $0.messages.append((Harness.monotonicNow(), text)) }
                }
            }
        }
        t.start()
    }

    private var isClosed: Bool { state.withLock { $0.closed } }

    /// Every message so far; a message may hold several NAME=VALUE lines.
    var all: [(time: Double, text: String)] { state.withLock { $0.messages } }

    /// The lines so far, split out of the messages.
    var lines: [String] { all.flatMap { $0.text.split(separator: "\n").map(String.init) } }

    func count(_ line: String) -> Int { lines.filter { $0 == line }.count }

    /// Waits for a line; returns the monotonic time of the message that carried it.
    func wait(for line: String, timeout: Double) -> Double? {
        var at: Double?
        _ = Harness.waitUntil(timeout: timeout) {
            at = all.first { $0.text.split(separator: "\n").contains { $0 == line } }?.time
            return at != nil
        }
        return at
    }

    var environment: [String: String] { ["NOTIFY_SOCKET": path] }

    func close() {
        state.withLock { $0.closed = true }
        Glibc.close(fd)
        unlink(path)
    }
}
