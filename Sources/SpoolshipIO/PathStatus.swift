import Glibc

/// What stat(2) or lstat(2) says of a path: its identity (device and inode) and its mode.
/// For the few places that must look at a path rather than at a descriptor (a socket file,
/// which cannot be opened; a directory whose permissions are only reported).
public struct PathStatus: Equatable, Sendable {
    public var device: UInt64
    public var inode: UInt64
    /// `st_mode`: the file type bits and the permissions.
    public var mode: mode_t

    public init(device: UInt64, inode: UInt64, mode: mode_t) {
        self.device = device
        self.inode = inode
        self.mode = mode
    }

    init(_ st: stat) {
        self.init(device: UInt64(st.st_dev), inode: UInt64(st.st_ino), mode: st.st_mode)
    }

    public var isSocket: Bool { mode & S_IFMT == S_IFSOCK }
    /// The permission bits (`mode & 0o777`).
    public var permissions: mode_t { mode & 0o777 }
    /// Whether both name the same file (device and inode).
    public func isSameFile(as other: PathStatus) -> Bool { device == other.device && inode == other.inode }
}

extension Files {
    /// lstat(2) of `path` (a symlink is described, not followed). nil when nothing is there
    /// (ENOENT, or ENOTDIR for a component that is not a directory); any other failure throws
    /// a `SyscallError` naming `lstat` and the path. EINTR is retried.
    public static func linkStatus(_ path: String) throws -> PathStatus? {
        var st = stat()
        do {
            _ = try syscall("lstat", path) { lstat(path, &st) }
        } catch let e as SyscallError where e.errno == ENOENT || e.errno == ENOTDIR {
            return nil
        }
        return PathStatus(st)
    }

    /// stat(2) of `path` (symlinks followed); nil when nothing is there, as `linkStatus`.
    public static func status(_ path: String) throws -> PathStatus? {
        var st = stat()
        do {
            _ = try syscall("stat", path) { stat(path, &st) }
        } catch let e as SyscallError where e.errno == ENOENT || e.errno == ENOTDIR {
            return nil
        }
        return PathStatus(st)
    }

    /// unlink(2) of a path. Returns false when it was already gone (ENOENT); any other
    /// failure throws a `SyscallError` naming `unlink` and the path.
    @discardableResult
    public static func unlink(path: String) throws -> Bool {
        do {
            _ = try syscall("unlink", path) { Glibc.unlink(path) }
            return true
        } catch let e as SyscallError where e.errno == ENOENT {
            return false
        }
    }
}
