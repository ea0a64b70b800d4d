import Foundation
import Glibc
import Synchronization

/// Helpers for tests that launch the real binaries.
enum Harness {
    struct Failure: Error, CustomStringConvertible {
        let description: String
        init(_ message: String) { description = message }
        static func errno(_ what: String, _ path: String, _ code: Int32 = Glibc.errno) -> Failure {
            Failure("\(what) \(path): \(String(cString: strerror(code))) (errno \(code))")
        }
    }

    /// SplitMix64: the deterministic PRNG behind `writeRandomFile` (usable by tests too).
    struct SplitMix64 {
        var state: UInt64
        init(seed: UInt64) { state = seed }
        mutating func next() -> UInt64 {
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
    }

    static let executableProbe = "spoolship-agent"

    /// Directory holding the built executables: `$SPOOLSHIP_BIN_DIR` if set; else the first directory,
    /// walking up from the test runner binary (argv[0], /proc/self/exe, Bundle.main), that contains
    /// `spoolship-agent`; else `<package>/.build/debug` (found from #filePath) if it has it; else that path anyway.
    static var binDir: URL { resolvedBinDir }

    private static let resolvedBinDir: URL = {
        let env = ProcessInfo.processInfo.environment
        if let dir = env["SPOOLSHIP_BIN_DIR"], !dir.isEmpty {
            return URL(fileURLWithPath: dir, isDirectory: true).standardizedFileURL
        }
        let fm = FileManager.default
        func hasProbe(_ dir: URL) -> Bool {
            fm.isExecutableFile(atPath: dir.appendingPathComponent(executableProbe).path)
        }
        var starts: [URL] = []
        if let arg0 = CommandLine.arguments.first, !arg0.isEmpty {
            let cwd = URL(fileURLWithPath: fm.currentDirectoryPath, isDirectory: true)
            starts.append(URL(fileURLWithPath: arg0, relativeTo: cwd).standardizedFileURL)
        }
        if let exe = try? fm.destinationOfSymbolicLink(atPath: "/proc/self/exe") {
            starts.append(URL(fileURLWithPath: exe))
        }
        if let exe = Bundle.main.executableURL { starts.append(exe) }
        starts.append(Bundle.main.bundleURL)
        for start in starts {
            var dir = start.resolvingSymlinksInPath()
            for _ in 0..<8 {
                if hasProbe(dir) { return dir }
                let parent = dir.deletingLastPathComponent()
                if parent.path == dir.path { break }
                dir = parent
            }
        }
        // <root>/Tests/SpoolshipIntegrationTests/Support/Harness.swift -> <root>
        let root = URL(fileURLWithPath: "\(#filePath)")
            .deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().deletingLastPathComponent()
        let build = root.appendingPathComponent(".build", isDirectory: true)
        let candidates = [
            build.appendingPathComponent("debug", isDirectory: true),
            build.appendingPathComponent("release", isDirectory: true),
        ]
        for c in candidates where hasProbe(c.resolvingSymlinksInPath()) { return c.resolvingSymlinksInPath() }
        return candidates[0]
    }()

    /// A port free on 127.0.0.1 a moment ago: bound to 0, read, let go.
    static func freePort() -> UInt16 {
        let probe = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(probe) }
        var a = sockaddr_in(sin_family: sa_family_t(AF_INET), sin_port: 0, sin_addr: in_addr(s_addr: inet_addr("127.0.0.1")), sin_zero: (0, 0, 0, 0, 0, 0, 0, 0))
        _ = withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(probe, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(probe, $0, &len) } }
        return UInt16(bigEndian: a.sin_port)
    }

    /// A fresh directory `/tmp/spoolship-<prefix>-XXXXXX` (mkdtemp). Remove it with `remove`.
    static func tempDir(_ prefix: String) throws -> URL {
        let clean = String(prefix.map { $0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" ? $0 : "_" })
        var template = Array("/tmp/spoolship-\(clean)-XXXXXX".utf8CString)
        let made: String? = template.withUnsafeMutableBufferPointer { buf in
            guard let p = mkdtemp(buf.baseAddress!) else { return nil }
            return String(cString: p)
        }
        guard let path = made else { throw Failure.errno("mkdtemp", "/tmp/spoolship-\(clean)-XXXXXX") }
        return URL(fileURLWithPath: path, isDirectory: true)
    }

    /// Removes a file or directory tree; errors (e.g. already gone) are ignored.
    static func remove(_ url: URL) {
        try? FileManager.default.removeItem(at: url)
    }

    /// What an strace log (`strace -f -s 0 -e trace=read,...,sendfile,mmap`) says a process
    /// moved: bytes its read calls returned, bytes of files it mapped for reading (mmap with
    /// PROT_READ and MAP_SHARED: LENGTH is the second argument), and bytes sendfile carried.
    /// With -f a call may be split: "NAME(... <unfinished ...>", then "<... NAME resumed>) = N".
    static func straceTally(_ text: String) -> (read: Int, mapped: Int, sent: Int) {
        var read = 0, mapped = 0, sent = 0
        for line in text.split(separator: "\n") {
            if line.contains("mmap resumed") { continue }
            if let call = line.range(of: "mmap(") {
                let args = line[call.upperBound...].split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
                if args.count >= 5, args[2] == "PROT_READ", args[3] == "MAP_SHARED", let length = Int(args[1]) { mapped += length }
                continue
            }
            // `NAME(ARGS) = N`, the "=" aligned with spaces; errors are `= -1 E...`.
            guard let eq = line.range(of: "= ", options: .backwards), let n = Int(line[eq.upperBound...].prefix { $0.isNumber }) else { continue }
            if line.contains("sendfile") { sent += n } else { read += n }
        }
        return (read, mapped, sent)
    }

    /// Polls `condition` every 20 ms until it returns true or `timeout` seconds pass (monotonic clock);
    /// returns whether it became true. The condition is always evaluated at least once, and once more
    /// at the deadline.
    @discardableResult
    static func waitUntil(timeout: Double, _ condition: () throws -> Bool) rethrows -> Bool {
        let deadline = monotonicNow() + max(0, timeout)
        while true {
            if try condition() { return true }
            let left = deadline - monotonicNow()
            if left <= 0 { return false }
            usleep(useconds_t(min(left, 0.020) * 1_000_000) + 1)
        }
    }

    /// Seconds on CLOCK_MONOTONIC.
    static func monotonicNow() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }

    /// Writes `size` bytes of deterministic pseudo-random content from `seed`: the little-endian bytes of
    /// successive SplitMix64 words (the last word truncated). Replaces any existing file.
    /// Copies a file, both ends opened with O_CLOEXEC. Foundation's `copyItem` and
    /// `Data.write` open without it, and `Process` closes the parent's descriptors only as it
    /// found them just before spawning: a file being written by one test while another spawns
    /// a daemon can leak into that daemon, which then holds it open for writing, and the agent
    /// rightly does not ship a file someone still writes.
    static func copyFile(_ from: URL, to: URL) throws {
        let src = open(from.path, O_RDONLY | O_CLOEXEC)
        guard src >= 0 else { throw Failure.errno("open", from.path) }
        defer { close(src) }
        let dst = open(to.path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard dst >= 0 else { throw Failure.errno("open", to.path) }
        defer { close(dst) }
        var st = stat()
        guard fstat(src, &st) == 0 else { throw Failure.errno("fstat", from.path) }
        var left = Int(st.st_size)
        while left > 0 {
            let n = sendfile(dst, src, nil, left)
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { throw Failure.errno("sendfile", to.path) }
            left -= n
        }
    }

    static func writeRandomFile(_ url: URL, size: Int, seed: UInt64) throws {
        precondition(size >= 0)
        let fd = open(url.path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw Failure.errno("open", url.path) }
        defer { close(fd) }
        let chunk = 1 << 20  // a multiple of 8, so chunking does not change the content
        let words = UnsafeMutablePointer<UInt64>.allocate(capacity: chunk / 8)
        defer { words.deallocate() }
        var rng = SplitMix64(seed: seed)
        var left = size
        while left > 0 {
            let n = min(chunk, left)
            let count = (n + 7) / 8
            var s = rng.state  // inlined SplitMix64 on a local: keeps unoptimised builds fast
            for i in 0..<count {
                s &+= 0x9E37_79B9_7F4A_7C15
                var z = s
                z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
                z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
                words[i] = (z ^ (z >> 31)).littleEndian
            }
            rng.state = s
            try writeAll(fd, UnsafeRawPointer(words), n, url.path)
            left -= n
        }
    }

    private static func writeAll(_ fd: Int32, _ p: UnsafeRawPointer, _ n: Int, _ path: String) throws {
        var done = 0
        while done < n {
            let k = Glibc.write(fd, p + done, n - done)
            if k < 0 {
                if errno == EINTR { continue }
                throw Failure.errno("write", path)
            }
            done += k
        }
    }

    /// Reads until `n` bytes or EOF; returns the count read.
    private static func readFull(_ fd: Int32, _ p: UnsafeMutableRawPointer, _ n: Int, _ path: String) throws -> Int {
        var done = 0
        while done < n {
            let k = Glibc.read(fd, p + done, n - done)
            if k < 0 {
                if errno == EINTR { continue }
                throw Failure.errno("read", path)
            }
            if k == 0 { break }
            done += k
        }
        return done
    }

    /// Byte-for-byte comparison of two files (streaming, 1 MiB chunks). Throws if either cannot be read.
    static func sameContents(_ a: URL, _ b: URL) throws -> Bool {
        let fa = open(a.path, O_RDONLY | O_CLOEXEC)
        guard fa >= 0 else { throw Failure.errno("open", a.path) }
        defer { close(fa) }
        let fb = open(b.path, O_RDONLY | O_CLOEXEC)
        guard fb >= 0 else { throw Failure.errno("open", b.path) }
        defer { close(fb) }
        var sa = stat(), sb = stat()
        if fstat(fa, &sa) == 0, fstat(fb, &sb) == 0, sa.st_size != sb.st_size { return false }
        let chunk = 1 << 20
        let ba = UnsafeMutableRawPointer.allocate(byteCount: chunk, alignment: 16)
        defer { ba.deallocate() }
        let bb = UnsafeMutableRawPointer.allocate(byteCount: chunk, alignment: 16)
        defer { bb.deallocate() }
        while true {
            let na = try readFull(fa, ba, chunk, a.path)
            let nb = try readFull(fb, bb, chunk, b.path)
            if na != nb { return false }
            if na == 0 { return true }
            if memcmp(ba, bb, na) != 0 { return false }
        }
    }

    /// Regular file names in `dir` (non-recursive, symlinks not followed), sorted; [] if the dir does not exist.
    static func files(in dir: URL) -> [String] {
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: dir.path) else { return [] }
        return names.filter { name in
            var st = stat()
            guard lstat(dir.appendingPathComponent(name).path, &st) == 0 else { return false }
            return (st.st_mode & S_IFMT) == S_IFREG
        }.sorted()
    }

    /// Waits until `url` holds a decimal port number (optionally followed by a newline) and returns it;
    /// nil on timeout. Without a trailing newline the value must read the same twice in a row (guards
    /// against catching a partly written file).
    static func readPortFile(_ url: URL, timeout: Double) -> UInt16? {
        var result: UInt16?
        var previous: String?
        _ = waitUntil(timeout: timeout) {
            guard let data = FileManager.default.contents(atPath: url.path),
                  let text = String(data: data, encoding: .utf8) else { previous = nil; return false }
            let trimmed = text.trimmingCharacters(in: .whitespacesAndNewlines)
            guard let port = UInt16(trimmed), port != 0 else { previous = nil; return false }
            if text.hasSuffix("\n") || previous == trimmed {
                result = port
                return true
            }
            previous = trimmed
            return false
        }
        return result
    }
}

/// A value that several threads read and write (a test's own thread and one it starts),
/// behind a `Mutex`.
final class Locked<Value: Sendable>: Sendable {
    private let mutex: Mutex<Value>
    init(_ value: Value) { mutex = Mutex(value) }
    var value: Value {
        get { mutex.withLock { $0 } }
        set { mutex.withLock { $0 = newValue } }
    }
}

/// A launched child process whose stdout+stderr go to a log file (which survives the process, so its
/// output can be printed on failure). The log is appended to, so a restarted daemon can share it.
///
/// Sendable (checked): a test may stop it from another thread than the one that started it;
/// Foundation's `Process` is Sendable, and whether it was stopped is behind a `Mutex` (held
/// for the whole of `stop`, so that a second caller returns once the process is gone).
final class Daemon: Sendable {
    let executable: URL
    let arguments: [String]
    let logURL: URL
    private let process = Process()
    private let stopped = Mutex(false)

    /// `executable` is a name in `Harness.binDir` (or a path, if it contains "/"). Starts it at once.
    init(_ executable: String, _ args: [String], log: URL, env: [String: String] = [:]) throws {
        self.executable = executable.contains("/")
            ? URL(fileURLWithPath: executable)
            : Harness.binDir.appendingPathComponent(executable)
        arguments = args
        logURL = log
        let fm = FileManager.default
        if !fm.fileExists(atPath: log.path) {
            guard fm.createFile(atPath: log.path, contents: nil) else {
                throw Harness.Failure("cannot create log file \(log.path)")
            }
        }
        let handle = try FileHandle(forWritingTo: log)
        defer { try? handle.close() }  // the child has its own copies once launched
        _ = try handle.seekToEnd()

        var environment = ProcessInfo.processInfo.environment
        for (k, v) in env { environment[k] = v }
        process.executableURL = self.executable
        process.arguments = args
        process.environment = environment
        process.standardInput = FileHandle.nullDevice
        process.standardOutput = handle
        process.standardError = handle
        do {
            try process.run()
        } catch {
            throw Harness.Failure("cannot launch \(self.executable.path): \(error)")
        }
    }

    var pid: Int32 { process.processIdentifier }
    var isRunning: Bool { process.isRunning }

    /// Sends `signal` (e.g. SIGKILL, SIGTERM) if the process is still running.
    func kill(_ signal: Int32) {
        guard process.isRunning else { return }
        _ = Glibc.kill(process.processIdentifier, signal)
    }

    /// Waits up to `timeout` seconds for exit; returns the exit status, 128+signo for a signal death,
    /// or nil on timeout.
    func wait(timeout: Double) -> Int32? {
        guard Harness.waitUntil(timeout: timeout, { !process.isRunning }) else { return nil }
        switch process.terminationReason {
        case .exit: return process.terminationStatus
        case .uncaughtSignal: return 128 + process.terminationStatus
        @unknown default: return process.terminationStatus
        }
    }

    /// The log file's contents so far.
    var output: String {
        guard let data = FileManager.default.contents(atPath: logURL.path) else { return "" }
        return String(decoding: data, as: UTF8.self)
    }

    /// SIGKILL if still running, then wait for it to be reaped. Safe to call twice. Its
    /// children go first: a daemon started under strace (`Cluster.launch(under:)`) would
    /// otherwise go on running, detached, once strace is killed.
    func stop() {
        stopped.withLock { stopped in
            if stopped { return }
            stopped = true
            if process.isRunning {
                for child in Self.children(of: process.processIdentifier) { _ = Glibc.kill(child, SIGKILL) }
                _ = Glibc.kill(process.processIdentifier, SIGKILL)
                _ = Harness.waitUntil(timeout: 10) { !process.isRunning }
            }
        }
    }

    deinit { stop() }

    /// The processes whose parent is `pid` (from /proc/*/stat).
    static func children(of pid: Int32) -> [Int32] {
        guard let entries = try? FileManager.default.contentsOfDirectory(atPath: "/proc") else { return [] }
        return entries.compactMap { e -> Int32? in
            guard let p = Int32(e), let stat = try? String(contentsOfFile: "/proc/\(p)/stat", encoding: .utf8),
                  let close = stat.lastIndex(of: ")") else { return nil }
            let fields = stat[stat.index(after: close)...].split(separator: " ")
            return fields.count > 2 && Int32(fields[1]) == pid ? p : nil
        }
    }
}
