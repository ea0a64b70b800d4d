import Glibc

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
        return "\(call)(\(path ?? "")): \(what) (errno \(errno))"
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
public final class OwnedFD: @unchecked Sendable {
    public private(set) var raw: Int32
    public let label: String

    public init(_ raw: Int32, label: String) {
        precondition(raw >= 0)
        self.raw = raw
        self.label = label
    }

    public var isOpen: Bool { raw >= 0 }

    /// Closes the descriptor, reporting the error of close(2) (on some file systems a late
    /// write error shows only here). EINTR is not retried: on Linux the fd is gone either way.
    public func close() throws {
        guard raw >= 0 else { return }
        let fd = raw
        raw = -1
        if Glibc.close(fd) < 0 && Glibc.errno != EINTR {
            throw SyscallError(call: "close", path: label, errno: Glibc.errno)
        }
    }

    deinit {
        if raw >= 0 { _ = Glibc.close(raw) }
    }
}
