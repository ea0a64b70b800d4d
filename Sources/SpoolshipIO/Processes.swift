import CSpoolshipLinux
import Foundation
import Glibc

/// Other processes: running a producer's reopen command, signalling a producer by its pid
/// file, and finding who holds a file open for writing.
public enum Processes {
    /// For the daemons, at start: buffers of 128 KiB and more are mapped and unmapped, never
    /// kept in malloc's arenas. With the threshold left to grow (glibc's default), a collector
    /// with 200 agents' threads peaked at 837 MiB resident in the benchmark; fixed, at 74-90 MiB.
    public static func fixMallocMmapThreshold() {
        _ = spsh_fix_mmap_threshold(128 << 10)
    }

    public enum Outcome: Equatable, CustomStringConvertible, Sendable {
        case exited(Int32)
        case killedBySignal(Int32)
        case timedOut(Double)

        public var description: String {
            switch self {
            case .exited(let c): return "exited with status \(c)"
            case .killedBySignal(let s): return "killed by signal \(s)"
            case .timedOut(let t): return "still running after \(t) s; killed"
            }
        }
    }

    /// Runs `/bin/sh -c command` (stdin /dev/null, stdout and stderr the daemon's) and waits up
    /// to `timeout` seconds; past it, its process group gets SIGKILL.
    public static func runShell(_ command: String, timeout: Double) throws -> Outcome {
        var pid: Int32 = 0
        let rc = spsh_spawn_shell(command, &pid)
        if rc != 0 { throw SyscallError(call: "posix_spawn", path: "/bin/sh -c \(command)", errno: rc) }
        let deadline = Date(timeIntervalSinceNow: timeout)
        var status: Int32 = 0
        while true {
            let r = waitpid(pid, &status, WNOHANG)
            if r == pid { break }
            if r < 0 && Glibc.errno != EINTR { throw SyscallError(call: "waitpid", path: "/bin/sh -c \(command)", errno: Glibc.errno) }
            if Date() > deadline {
                kill(-pid, SIGKILL)
                while waitpid(pid, &status, 0) < 0 && Glibc.errno == EINTR {}
                return .timedOut(timeout)
            }
            usleep(5_000)
        }
        // WIFEXITED / WEXITSTATUS / WTERMSIG, which are macros.
        if status & 0x7f == 0 { return .exited((status >> 8) & 0xff) }
        return .killedBySignal(status & 0x7f)
    }

    /// Reads a pid from `pidFile` (a decimal number, surrounding whitespace allowed) and sends
    /// it `signal`. Errors name the file and what was wrong with it.
    public static func signal(pidFile: String, signal: Int32) throws -> Int32 {
        let fd = try Files.open(pidFile, O_RDONLY)
        let bytes = try Files.readAll(fd).prefix(64)
        let text = String(decoding: bytes, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        guard let pid = Int32(text), pid > 1 else {
            throw SyscallError(call: "read pid", path: "\(pidFile) (holds '\(text.prefix(20))', not a process id)", errno: EINVAL)
        }
        _ = try syscall("kill", "pid \(pid) from \(pidFile)") { kill(pid, signal) }
        return pid
    }

    /// The processes that hold the file (device, inode) open for writing, found by a scan of
    /// /proc/*/fd and the access mode in /proc/*/fdinfo. Processes we may not inspect are
    /// skipped, so the answer is a lower bound for an unprivileged caller.
    public static func writers(dev: UInt64, ino: UInt64) -> [Int32] {
        guard let procs = try? FileManager.default.contentsOfDirectory(atPath: "/proc") else { return [] }
        var found: [Int32] = []
        for p in procs {
            guard let pid = Int32(p) else { continue }
            guard let fds = try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(p)/fd") else { continue }
            for f in fds {
                var st = stat()
                guard fstatat(AT_FDCWD, "/proc/\(p)/fd/\(f)", &st, 0) == 0, UInt64(st.st_dev) == dev, UInt64(st.st_ino) == ino else { continue }
                guard let info = try? String(contentsOfFile: "/proc/\(p)/fdinfo/\(f)", encoding: .utf8),
                    let line = info.split(separator: "\n").first(where: { $0.hasPrefix("flags:") }),
                    let flags = Int32(line.dropFirst("flags:".count).trimmingCharacters(in: .whitespaces), radix: 8)
                else { continue }
                if flags & O_ACCMODE != O_RDONLY {
                    found.append(pid)
                    break
                }
            }
        }
        return found
    }
}

extension Processes {
    /// A file (device, inode) that some process holds open, opened for reading through that
    /// process's descriptor (/proc/PID/fd/N): the way back to a file deleted while no one
    /// else held it (a producer that never reopens still writes into it). nil when no process
    /// we may look at holds it.
    public static func openHeld(dev: UInt64, ino: UInt64) -> OwnedFD? {
        guard let procs = try? FileManager.default.contentsOfDirectory(atPath: "/proc") else { return nil }
        for p in procs where Int32(p) != nil && Int32(p) != getpid() {
            guard let fds = try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(p)/fd") else { continue }
            for f in fds {
                let path = "/proc/\(p)/fd/\(f)"
                var st = stat()
                guard fstatat(AT_FDCWD, path, &st, 0) == 0, UInt64(st.st_dev) == dev, UInt64(st.st_ino) == ino,
                      (st.st_mode & S_IFMT) == S_IFREG else { continue }
                let fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK)
                if fd >= 0 { return OwnedFD(fd, label: path) }
            }
        }
        return nil
    }

    /// Raises this process's soft limit of open descriptors to its hard limit (systemd's
    /// LimitNOFILE= sets both; a shell usually gives 1024 soft).
    public static func raiseDescriptorLimit() {
        var lim = rlimit()
        if getrlimit(Int32(RLIMIT_NOFILE.rawValue), &lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max
            _ = setrlimit(Int32(RLIMIT_NOFILE.rawValue), &lim)
        }
    }
}
