import CSpoolshipLinux
import Glibc

/// The zero-copy data path: `sendfile(2)` on the agent, `splice(2)` on the collector.
/// Both run on the daemons' own threads (never on Swift's cooperative pool): they block.
public enum ZeroCopy {
    /// Sends `count` bytes of `file` from `offset` to `socket` with sendfile(2). Short transfers
    /// are continued; EINTR is retried; a send deadline (SO_SNDTIMEO) shows as ETIMEDOUT.
    /// `progress` is called after each successful call with the bytes sent so far.
    public static func sendFile(_ file: OwnedFD, offset: Int64, count: Int64, to socket: Socket,
                                progress: (Int64) -> Void = { _ in }) throws {
        var off = offset
        let end = offset + count
        while off < end {
            let want = Int(min(end - off, 1 << 30))
            let n = spsh_sendfile(socket.fd.raw, file.raw, &off, want)
            if n < 0 {
                let e = Glibc.errno
                if e == EINTR { continue }
                throw SyscallError(call: "sendfile", path: "\(file.label) -> \(socket.peer)", errno: e == EAGAIN ? ETIMEDOUT : e)
            }
            if n == 0 {
                // The file is shorter than its sealed size: it changed under us.
                throw SyscallError(call: "sendfile", path: "\(file.label) (file shrank at offset \(off))", errno: EIO)
            }
            progress(off - offset)
        }
    }
}

/// Moves bytes from a socket into a file through a pipe: socket -> pipe -> file, with
/// splice(2). The pipe belongs to one connection; after an error it may still hold bytes that
/// belong to nobody, so it is replaced (never reused while it holds data). Not Sendable: the
/// thread that reads the connection owns it.
public final class Splicer {
    private var readEnd: OwnedFD
    private var writeEnd: OwnedFD
    public private(set) var capacity: Int

    public init(pipeSize: Int = 1 << 20) throws {
        (readEnd, writeEnd, capacity) = try Self.makePipe(pipeSize)
    }

    static func makePipe(_ size: Int) throws -> (OwnedFD, OwnedFD, Int) {
        var fds: [Int32] = [-1, -1]
        _ = try syscall("pipe2") { spsh_pipe2(&fds, O_CLOEXEC) }
        let r = OwnedFD(fds[0], label: "pipe")
        let w = OwnedFD(fds[1], label: "pipe")
        // F_SETPIPE_SZ is capped by /proc/sys/fs/pipe-max-size; use what the kernel granted.
        let got = spsh_set_pipe_size(w.raw, Int32(size))
        let capacity = got > 0 ? Int(got) : 65536
        return (r, w, capacity)
    }

    /// Moves exactly `count` bytes from `socket` into `file` at `offset`. `progress` is called
    /// with the file offset reached after each chunk lands in the file. Throws when the peer
    /// closes early (ECONNRESET), on a receive deadline (ETIMEDOUT), or on a file error such
    /// as ENOSPC; the bytes that reached the file before the error are reported by `progress`.
    public func receive(from socket: Socket, into file: OwnedFD, at offset: Int64, count: Int64,
                        progress: (Int64) -> Void) throws {
        try move(from: socket.fd.raw, label: socket.peer, into: file, at: offset, count: count,
                 blocked: nil, notData: nil, progress: progress)
    }

    /// The splice loop of `receive`, from the descriptor `source` (`label` names it). For a
    /// non-blocking kernel-TLS socket: `blocked` waits for it to be readable (EAGAIN), and
    /// `notData` takes what splice refuses (EINVAL: a record that is not data, such as an
    /// alert or a key update; EKEYEXPIRED) with a TLS read, given the file offset and the
    /// bytes still owed, and returns the bytes it wrote there.
    func move(from source: Int32, label: String, into file: OwnedFD, at offset: Int64, count: Int64,
              blocked: (() throws -> Void)?, notData: ((Int64, Int64) throws -> Int64)?,
              progress: (Int64) -> Void) throws {
        var fileOff = offset
        var left = count
        while left > 0 {
            let want = Int(min(left, Int64(capacity)))
            let inPipe = spsh_splice(source, nil, writeEnd.raw, nil, want, spsh_SPLICE_F_MOVE | spsh_SPLICE_F_MORE)
            if inPipe < 0 {
                let e = Glibc.errno
                if e == EINTR { continue }
                if e == EAGAIN, let wait = blocked { try wait(); continue }
                if e == EINVAL || e == EKEYEXPIRED, let take = notData {
                    let n = try take(fileOff, left)
                    fileOff += n
                    left -= n
                    if n > 0 { progress(fileOff) }
                    continue
                }
                throw SyscallError(call: "splice", path: "\(label) -> pipe", errno: e == EAGAIN ? ETIMEDOUT : e)
            }
            if inPipe == 0 {
                throw SyscallError(call: "splice", path: "\(label) (peer closed with \(left) bytes of the frame unsent)", errno: ECONNRESET)
            }
            var pending = inPipe
            while pending > 0 {
                let out = spsh_splice(readEnd.raw, nil, file.raw, &fileOff, pending, spsh_SPLICE_F_MOVE | spsh_SPLICE_F_MORE)
                if out < 0 {
                    let e = Glibc.errno
                    if e == EINTR { continue }
                    // The pipe still holds `pending` bytes that will never be written.
                    try? resetPipe()
                    throw SyscallError(call: "splice", path: file.label, errno: e)
                }
                if out == 0 {
                    try? resetPipe()
                    throw SyscallError(call: "splice", path: "\(file.label) (no progress)", errno: EIO)
                }
                pending -= out
                progress(fileOff)
            }
            left -= Int64(inPipe)
        }
    }

    func resetPipe() throws {
        try? readEnd.close()
        try? writeEnd.close()
        (readEnd, writeEnd, capacity) = try Self.makePipe(capacity)
    }
}
