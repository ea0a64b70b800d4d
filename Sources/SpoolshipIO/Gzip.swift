import CSpoolshipZlib
import Glibc
import SpoolshipCore

/// gzip (RFC 1952) compression of a whole file into another, with zlib's deflate. Used at seal
/// time, so that what crosses the network is the finished file, sent with sendfile.
public enum Gzip {
    /// Compresses the first `size` bytes of `source` into `destination` (written from its
    /// current offset, normally an empty new file), and returns the size and CRC-32 of what was
    /// written: the checksum covers the file as shipped. The caller syncs and renames.
    /// `progress` is called after each MiB read; it may throw to give up.
    public static func compress(_ source: OwnedFD, size: Int64, into destination: OwnedFD, level: Int32,
                                progress: () throws -> Void = {}) throws -> (size: UInt64, crc: UInt32) {
        var strm = z_stream()
        guard spsh_deflate_init_gzip(&strm, level) == Z_OK else {
            throw SyscallError(call: "deflateInit2", path: "\(destination.label) (zlib could not start; level \(level))", errno: ENOMEM)
        }
        defer { deflateEnd(&strm) }
        let chunk = 1 << 20
        var input = [UInt8](repeating: 0, count: chunk)
        var output = [UInt8](repeating: 0, count: chunk + chunk / 8)
        var crc = CRC32()
        var written: UInt64 = 0
        var pos: Int64 = 0
        var finished = false
        while !finished {
            let want = Int(min(Int64(chunk), size - pos))
            var got = 0
            if want > 0 {
                got = try syscall("pread", source.label) { input.withUnsafeMutableBytes { Glibc.pread(source.raw, $0.baseAddress!, want, Int(pos)) } }
                if got == 0 { throw SyscallError(call: "pread", path: "\(source.label) (shorter than the \(size) bytes expected)", errno: EIO) }
                pos += Int64(got)
                try progress()
            }
            let flush = pos >= size ? Z_FINISH : Z_NO_FLUSH
            try input.withUnsafeMutableBytes { inBuf in
                strm.next_in = inBuf.baseAddress!.assumingMemoryBound(to: Bytef.self)
                strm.avail_in = uInt(got)
                repeat {
                    let produced = output.withUnsafeMutableBytes { outBuf -> Int32 in
                        strm.next_out = outBuf.baseAddress!.assumingMemoryBound(to: Bytef.self)
                        strm.avail_out = uInt(outBuf.count)
                        return deflate(&strm, flush)
                    }
                    guard produced == Z_OK || produced == Z_STREAM_END || produced == Z_BUF_ERROR else {
                        throw SyscallError(call: "deflate", path: "\(destination.label) (zlib error \(produced))", errno: EIO)
                    }
                    let n = output.count - Int(strm.avail_out)
                    if n > 0 {
                        try output.withUnsafeBytes { p in
                            let slice = UnsafeRawBufferPointer(rebasing: p[0..<n])
                            crc.update(slice)
                            var done = 0
                            while done < n {
                                done += try syscall("write", destination.label) { Glibc.write(destination.raw, slice.baseAddress! + done, n - done) }
                            }
                        }
                        written += UInt64(n)
                    }
                    if produced == Z_STREAM_END { finished = true }
                } while strm.avail_out == 0 || (flush == Z_FINISH && !finished)
            }
        }
        return (written, crc.value)
    }
}
