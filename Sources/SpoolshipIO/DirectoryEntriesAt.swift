import CSpoolshipLinux
import Glibc

extension Files {
    /// The entries of the directory `dir` is open on, but `.` and `..`, in no particular order:
    /// the fd-relative form of `entries(_ path:)`. The listing reads through a descriptor of
    /// its own (openat(2) of "." beneath `dir`, then fdopendir(3)), so `dir`'s own offset is
    /// left alone and two threads may list one directory at once.
    public static func entries(_ dir: OwnedFD) throws -> [DirectoryEntry] {
        var fd: Int32
        repeat { fd = openat(dir.raw, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC) } while fd < 0 && Glibc.errno == EINTR
        guard fd >= 0 else { throw SyscallError(call: "openat", path: dir.label, errno: Glibc.errno) }
        guard let d = fdopendir(fd) else {
            let e = Glibc.errno
            Glibc.close(fd)
            throw SyscallError(call: "fdopendir", path: dir.label, errno: e)
        }
        defer { closedir(d) }  // closes `fd` too
        var out: [DirectoryEntry] = []
        while true {
            Glibc.errno = 0
            guard let e = readdir(d) else {
                if Glibc.errno != 0 { throw SyscallError(call: "readdir", path: dir.label, errno: Glibc.errno) }
                return out
            }
            let raw: [UInt8] = withUnsafeBytes(of: e.pointee.d_name) { p in
                let bytes = p.bindMemory(to: UInt8.self)
                return Array(bytes.prefix { $0 != 0 })
            }
            if raw == [0x2E] || raw == [0x2E, 0x2E] { continue }
            out.append(DirectoryEntry(rawName: raw, name: FileName.decode(raw), type: e.pointee.d_type))
        }
    }
}
