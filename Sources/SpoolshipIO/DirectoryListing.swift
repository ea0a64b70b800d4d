import Glibc

extension Files {
    /// The entries of the directory held by `dir` but `.` and `..` (names as bytes, in no
    /// particular order), read through a descriptor of its own opened beneath `dir`: the
    /// listing is of the directory the caller holds, whatever its path names now.
    public static func entries(of dir: OwnedFD) throws -> [DirectoryEntry] {
        let fd = try syscall("openat", dir.label) { openat(dir.raw, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC) }
        // fdopendir takes the descriptor over; closedir closes it.
        guard let d = fdopendir(fd) else {
            let e = Glibc.errno
            Glibc.close(fd)
            throw SyscallError(call: "fdopendir", path: dir.label, errno: e)
        }
        defer { closedir(d) }
        var out: [DirectoryEntry] = []
        while true {
            Glibc.errno = 0
            guard let e = readdir(d) else {
                if Glibc.errno != 0 { throw SyscallError(call: "readdir", path: dir.label, errno: Glibc.errno) }
                return out
            }
            let raw: [UInt8] = withUnsafeBytes(of: e.pointee.d_name) { p in
                Array(p.bindMemory(to: UInt8.self).prefix { $0 != 0 })
            }
            if raw == [0x2E] || raw == [0x2E, 0x2E] { continue }
            out.append(DirectoryEntry(rawName: raw, name: FileName.decode(raw), type: e.pointee.d_type))
        }
    }

    /// The names (valid UTF-8 only) in the directory held by `dir`, sorted.
    public static func names(of dir: OwnedFD) throws -> [String] {
        try entries(of: dir).compactMap(\.name).sorted()
    }

    /// stat(2) of a path, following symbolic links (a spool's own configured path); nil when
    /// nothing is there.
    public static func statPath(_ path: String) throws -> Glibc.stat? {
        var st = Glibc.stat()
        if fstatat(AT_FDCWD, path, &st, 0) == 0 { return st }
        if Glibc.errno == ENOENT || Glibc.errno == ENOTDIR { return nil }
        throw SyscallError(call: "stat", path: path, errno: Glibc.errno)
    }

    /// renameat(2), replacing `to` if it exists.
    public static func rename(_ fromDir: OwnedFD, _ from: String, _ toDir: OwnedFD, _ to: String, label: String) throws {
        _ = try syscall("renameat", label) { renameat(fromDir.raw, from, toDir.raw, to) }
    }
}

extension Files {
    /// Opens `name` beneath `dir` for reading (no symlink followed, never blocking on a FIFO);
    /// nil when it does not exist.
    public static func openIfPresent(_ dir: OwnedFD, _ name: String, label: String) throws -> OwnedFD? {
        do {
            return try openBeneath(dir, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK, label: label)
        } catch let e as SyscallError where e.errno == ENOENT {
            return nil
        }
    }
}
