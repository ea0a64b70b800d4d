import Glibc
import Synchronization

/// A failed system call: which call, on what (a path or a peer), and the errno.
/// Prints like `splice(/data/.spoolship/partial/web-1/ab12.part): No space left on device (errno 28)`.
public struct SyscallError: Error, CustomStringConvertible, Equatable, Sendable {
    public var call: String
    public var path: String?
    public var errno: Int32

    public init(call: String, path: String? = nil, errno: Int32) {
        self.call = call
        self.path = path
        self.errno = errno
    }

    public var description: String {
        let what = String(cString: strerror(errno))
        // A call whose words name what it was on already ("TLS read from HOST:PORT") has no path.
        guard let path = path else { return "\(call): \(what) (errno \(errno))" }
        return "\(call)(\(path)): \(what) (errno \(errno))"
    }

    public var isNoSpace: Bool { errno == ENOSPC || errno == EDQUOT }
}

/// Runs a call that returns -1 and sets errno on failure, retrying EINTR.
@inline(__always)
public func syscall<T: FixedWidthInteger>(_ call: String, _ path: @autoclosure () -> String? = nil, _ body: () -> T) throws -> T {
    while true {
        let r = body()
        if r >= 0 { return r }
        let e = Glibc.errno
        if e == EINTR { continue }
        throw SyscallError(call: call, path: path(), errno: e)
    }
}

/// A file descriptor with exactly one owner, closed exactly once (by `close()` or on deinit).
/// Other code uses the raw number only while it holds the owner.
///
/// Sendable (checked): the number lives in an atomic, and `close()` takes it out with one
/// exchange, so of two threads closing at once exactly one calls close(2), and a thread that
/// reads `raw` sees either the open descriptor or -1. What no type can promise is that a
/// number read before another thread's close is not reused by the kernel before it is used:
/// a descriptor shared between threads (a socket one thread reads while another may stop it)
/// is woken with shutdown(2), which leaves the number in place, and closed by the thread
/// that uses it.
public final class OwnedFD: Sendable {
    private let number: Atomic<Int32>
    public let label: String

    public init(_ raw: Int32, label: String) {
        precondition(raw >= 0)
        number = Atomic(raw)
        self.label = label
    }

    /// The descriptor, or -1 once closed.
    public var raw: Int32 { number.load(ordering: .acquiring) }

    public var isOpen: Bool { raw >= 0 }

    /// Closes the descriptor, reporting the error of close(2) (on some file systems a late
    /// write error shows only here). EINTR is not retried: on Linux the fd is gone either way.
    public func close() throws {
        let fd = number.exchange(-1, ordering: .acquiringAndReleasing)
        guard fd >= 0 else { return }
        if Glibc.close(fd) < 0 && Glibc.errno != EINTR {
            throw SyscallError(call: "close", path: label, errno: Glibc.errno)
        }
    }

    deinit {
        let fd = number.load(ordering: .relaxed)
        if fd >= 0 { _ = Glibc.close(fd) }
    }
}
