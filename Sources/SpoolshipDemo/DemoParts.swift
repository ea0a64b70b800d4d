import Foundation
import Glibc
import SpoolshipDaemon
import Synchronization

/// What the demo prints: lines on standard output, each written at once with write(2) (no
/// stdio buffer, so that they keep their order with the daemons' lines relayed among them).
/// When standard output is a terminal, a status line stays under them, redrawn in place;
/// otherwise there is none, and the output reads the same piped into a file.
public final class DemoOutput: Sendable {
    public let terminal = isatty(STDOUT_FILENO) == 1

    struct State {
        /// The status line shown under the lines ("" when none).
        var status = ""
        var lastDraw = -Double.infinity
    }

    /// Held while writing, so that lines and the status line never interleave.
    let state = Mutex(State())

    public init() {}

    public func line(_ s: String) {
        state.withLock { st in
            if st.status.isEmpty { Self.write(s + "\n") } else { Self.write("\r\u{1B}[K" + s + "\n" + st.status) }
        }
    }

    /// The status line (on a terminal only), redrawn at most every 100 ms, and cut to the
    /// terminal's width so that it never wraps.
    public func setStatus(_ s: String) {
        guard terminal else { return }
        state.withLock { st in
            let now = monotonicNow()
            guard now - st.lastDraw >= 0.1 else { return }
            st.lastDraw = now
            var ws = winsize()
            let width = ioctl(STDOUT_FILENO, UInt(TIOCGWINSZ), &ws) == 0 && ws.ws_col > 1 ? Int(ws.ws_col) - 1 : 79
            st.status = String(s.prefix(width))
            Self.write("\r\u{1B}[K" + st.status)
        }
    }

    public func clearStatus() {
        state.withLock { st in
            if !st.status.isEmpty { Self.write("\r\u{1B}[K") }
            st.status = ""
        }
    }

    public static func write(_ s: String, fd: Int32 = STDOUT_FILENO) {
        TerminalProgress.write(s, fd: fd)
    }
}

/// A daemon the demo runs: its standard output and error are relayed, line by line and
/// prefixed with its name, through the demo's output.
///
/// `@unchecked Sendable`: `Process` and `Thread` are not Sendable, but both are set once in
/// `init` and never replaced; the process is started, asked and signalled only by the demo's
/// main thread, and the relay thread touches only the pipe it was given, the demo's
/// `DemoOutput` and the `Locked` counters.
public final class DemoDaemon: @unchecked Sendable {
    public let name: String
    private let process = Process()
    private let relay: Thread
    private let relayed = Locked(0)
    private let relayDone = Locked(false)

    public init(_ name: String, executable: URL, arguments: [String], out: DemoOutput) throws {
        self.name = name
        let pipe = Pipe()
        process.executableURL = executable
        process.arguments = arguments
        // Nothing of a service manager the demo may run under is for them.
        var env = ProcessInfo.processInfo.environment
        for k in ["NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "WATCHDOG_USEC", "WATCHDOG_PID"] { env[k] = nil }
        process.environment = env
        process.standardInput = FileHandle.nullDevice
        process.standardOutput = pipe
        process.standardError = pipe
        do {
            try process.run()
        } catch {
            throw DaemonError("cannot start \(executable.path): \(error)")
        }
        let reading = pipe.fileHandleForReading
        let relayed = self.relayed
        let relayDone = self.relayDone
        relay = startThread("demo-relay-\(name)") {
            var pending = Data()
            while true {
                let chunk = reading.availableData
                if chunk.isEmpty { break }
                pending.append(chunk)
                while let nl = pending.firstIndex(of: 10) {
                    relayed.withLock { $0 += 1 }
                    out.line("  [\(name)] " + String(decoding: pending[pending.startIndex..<nl], as: UTF8.self))
                    pending.removeSubrange(pending.startIndex...nl)
                }
            }
            if !pending.isEmpty { out.line("  [\(name)] " + String(decoding: pending, as: UTF8.self)) }
            relayDone.withLock { $0 = true }
        }
    }

    public var isRunning: Bool { process.isRunning }

    /// How it ended, for a message: "exit 1; its messages are above" (when it printed any).
    public var ending: String {
        exitDescription + (relayed.withLock { $0 } > 0 ? "; its messages are above" : "")
    }

    /// "exit N" or "killed by signal N".
    public var exitDescription: String {
        process.terminationReason == .uncaughtSignal ? "killed by signal \(process.terminationStatus)" : "exit \(process.terminationStatus)"
    }

    public var exitedCleanly: Bool { !process.isRunning && process.terminationReason == .exit && process.terminationStatus == 0 }

    /// Waits up to `timeout` seconds for the process to end; returns whether it did. Its last
    /// lines are relayed before this returns (or 2 s more have passed).
    public func wait(timeout: Double) -> Bool {
        let deadline = monotonicNow() + timeout
        while process.isRunning {
            if monotonicNow() >= deadline { return false }
            usleep(20_000)
        }
        let relayDeadline = monotonicNow() + 2
        while !relayDone.withLock({ $0 }) && monotonicNow() < relayDeadline { usleep(5_000) }
        return true
    }

    /// SIGTERM (a graceful stop), then waits up to `timeout` seconds; returns whether it ended.
    public func stop(timeout: Double) -> Bool {
        if process.isRunning { _ = Glibc.kill(process.processIdentifier, SIGTERM) }
        return wait(timeout: timeout)
    }

    /// The demo's way out when something failed: SIGTERM, and SIGKILL if it is still running
    /// 5 s later.
    public func kill() {
        if stop(timeout: 5) { return }
        _ = Glibc.kill(process.processIdentifier, SIGKILL)
        _ = wait(timeout: 10)
    }
}

/// The signal (SIGINT or SIGTERM) that interrupted the demo, or 0. `nonisolated(unsafe)`: a
/// signal handler can take no lock (a Mutex is not async-signal-safe); it only stores a
/// `sig_atomic_t`, and the main thread only reads it.
nonisolated(unsafe) var demoInterrupted: sig_atomic_t = 0

/// On SIGINT or SIGTERM the demo stops what it started and says so, instead of dying and
/// leaving an agent and a collector running. SIGPIPE is ignored: with its output gone
/// (`spoolship demo | head`), it still runs to its end and stops them.
public func demoHandleSignals() {
    demoInterrupted = 0  // initialised here, not first in the handler
    signal(SIGPIPE, SIG_IGN)
    signal(SIGINT) { demoInterrupted = $0 }
    signal(SIGTERM) { demoInterrupted = $0 }
}

/// What the producers did, shared with the demo's main thread.
public struct DemoProduced: Sendable {
    public struct Blob: Sendable {
        var name: String
        var bytes: [UInt8]
        /// When it was renamed into the spool (monotonic seconds).
        var droppedAt: Double
    }
    public var blobs: [Blob] = []
    /// The log stream's bytes, as written to `app.log`.
    public var log = Data()
    /// When each record was written (monotonic seconds), by sequence number (from 1).
    public var recordTimes: [Double] = [0]
    public var blobsDone = false
    public var logDone = false
    public var error: String?
    public var stop = false
}

public enum DemoProducers {
    /// Blob sizes, in the order they are dropped: 0 B to 4 MiB.
    public static let blobSizes = [4096, 0, 1 << 20, 100, 65_536, 1, 3 << 20, 10_000, 500_000, 4 << 20, 100_000, 2 << 20]

    /// Drops the blobs into `inbox` one at a time over `seconds`, each written under a hidden
    /// `.NAME.tmp` name and then renamed, as a producer should (a copy goes to `originals`).
    public static func dropBlobs(inbox: String, originals: String, seconds: Double, shared: Locked<DemoProduced>) {
        let start = monotonicNow()
        let interval = seconds / Double(blobSizes.count)
        do {
            for (i, size) in blobSizes.enumerated() {
                guard pace(until: start + Double(i) * interval, shared) else { break }
                let name = String(format: "blob-%02d.bin", i + 1)
                let bytes = pseudoRandom(size, seed: UInt64(i + 1))
                try write(bytes, to: "\(originals)/\(name)")
                try write(bytes, to: "\(inbox)/.\(name).tmp")
                guard rename("\(inbox)/.\(name).tmp", "\(inbox)/\(name)") == 0 else {
                    throw DaemonError("cannot rename \(inbox)/.\(name).tmp: \(String(cString: strerror(errno)))")
                }
                let now = monotonicNow()
                shared.withLock { $0.blobs.append(.init(name: name, bytes: bytes, droppedAt: now)) }
            }
        } catch {
            shared.withLock { $0.error = $0.error ?? "the blob producer: \(error)" }
        }
        shared.withLock { $0.blobsDone = true }
    }

    /// Appends records to `path` for `seconds`, a batch of `perBatch` every `period`: each
    /// batch opens the path (O_APPEND, creating it), writes, and closes it. So the writer
    /// never holds a rotated file: after the agent renames `app.log` aside, the next batch
    /// creates a new one (the spool's reopen = "path"), and the agent seals the rotated file
    /// as soon as the batch that was writing to it closes it. A copy of every byte goes to
    /// `copy`.
    public static func writeLog(path: String, copy: String, seconds: Double, period: Double = 0.05, perBatch: Int = 20, shared: Locked<DemoProduced>) {
        let start = monotonicNow()
        var seq = 0
        var rng = UInt64(0x5EED)
        do {
            let copyFD = open(copy, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
            guard copyFD >= 0 else { throw DaemonError("cannot create \(copy): \(String(cString: strerror(errno)))") }
            defer { close(copyFD) }
            var batchNo = 0
            while true {
                let due = start + Double(batchNo) * period
                guard due < start + seconds, pace(until: due, shared) else { break }
                batchNo += 1
                var batch = ""
                for _ in 0..<perBatch {
                    seq += 1
                    batch += record(seq: seq, rng: &rng)
                }
                let bytes = Array(batch.utf8)
                let fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o644)
                guard fd >= 0 else { throw DaemonError("cannot open \(path): \(String(cString: strerror(errno)))") }
                let wrote = writeAll(fd, bytes)
                let closed = close(fd) == 0
                guard wrote, closed else { throw DaemonError("cannot append to \(path): \(String(cString: strerror(errno)))") }
                guard writeAll(copyFD, bytes) else { throw DaemonError("cannot write \(copy): \(String(cString: strerror(errno)))") }
                let now = monotonicNow()
                shared.withLock {
                    $0.log.append(contentsOf: bytes)
                    for _ in 0..<perBatch { $0.recordTimes.append(now) }
                }
            }
        } catch {
            shared.withLock { $0.error = $0.error ?? "the log writer: \(error)" }
        }
        shared.withLock { $0.logDone = true }
    }

    /// Sleeps until `t` (monotonic), in short slices; false when the demo is stopping.
    private static func pace(until t: Double, _ shared: Locked<DemoProduced>) -> Bool {
        while true {
            if shared.withLock({ $0.stop }) { return false }
            let left = t - monotonicNow()
            if left <= 0 { return true }
            usleep(useconds_t(min(left, 0.05) * 1_000_000) + 1)
        }
    }

    /// A log line as an application would write it: `TIME SEQ LEVEL message`.
    public static func record(seq: Int, rng: inout UInt64) -> String {
        rng = rng &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
        let r = Int(truncatingIfNeeded: rng >> 33)
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        var tm = tm()
        var secs = ts.tv_sec
        gmtime_r(&secs, &tm)
        let time = String(format: "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", Int(tm.tm_year) + 1900, Int(tm.tm_mon) + 1, Int(tm.tm_mday),
                          Int(tm.tm_hour), Int(tm.tm_min), Int(tm.tm_sec), Int(ts.tv_nsec / 1_000_000))
        let message: String
        switch r % 8 {
        case 0, 1, 2: message = "INFO GET /api/items/\(r % 1000) 200 \(r % 40 + 1)ms"
        case 3: message = "INFO POST /api/orders 201 \(r % 90 + 10)ms order=\(r % 100_000)"
        case 4: message = "INFO user \(r % 5000) logged in from 10.0.\(r % 256).\(r / 256 % 256)"
        case 5: message = "DEBUG cache miss key=item:\(r % 1000)"
        case 6: message = "WARN slow query on orders took \(r % 900 + 100)ms"
        default: message = "INFO GET /healthz 200 0ms"
        }
        return "\(time) \(String(format: "%07d", seq)) \(message)\n"
    }

    /// The sequence number of a record line (its second field).
    public static func seq(ofRecord line: Data.SubSequence) -> Int? {
        let fields = line.split(separator: 32, maxSplits: 2)
        guard fields.count >= 2 else { return nil }
        return Int(String(decoding: fields[1], as: UTF8.self))
    }

    /// The first and last record in a log segment's bytes.
    public static func recordRange(_ d: Data) -> (first: Int, last: Int)? {
        let lines = d.split(separator: 10)
        guard let f = lines.first.flatMap(seq(ofRecord:)), let l = lines.last.flatMap(seq(ofRecord:)) else { return nil }
        return (f, l)
    }

    /// `size` bytes from a xorshift generator, 8 at a time (quick even in a debug build).
    public static func pseudoRandom(_ size: Int, seed: UInt64) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: size)
        var x = 0x9E37_79B9_7F4A_7C15 &* seed
        bytes.withUnsafeMutableBytes { p in
            var off = 0
            while off < size {
                x ^= x << 13; x ^= x >> 7; x ^= x << 17
                withUnsafeBytes(of: x.littleEndian) { w in
                    let n = min(8, size - off)
                    p.baseAddress!.advanced(by: off).copyMemory(from: w.baseAddress!, byteCount: n)
                }
                off += 8
            }
        }
        return bytes
    }

    public static func write(_ bytes: [UInt8], to path: String) throws {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw DaemonError("cannot create \(path): \(String(cString: strerror(errno)))") }
        let ok = writeAll(fd, bytes)
        guard close(fd) == 0, ok else { throw DaemonError("cannot write \(path): \(String(cString: strerror(errno)))") }
    }

    public static func writeAll(_ fd: Int32, _ bytes: [UInt8]) -> Bool {
        var off = 0
        while off < bytes.count {
            let n = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress! + off, $0.count - off) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { return false }
            off += n
        }
        return true
    }
}

/// Sizes for people: `0 B`, `100 B`, `4.0 KiB`, `1.0 MiB`.
public func demoSize(_ n: Int) -> String {
    if n < 1024 { return "\(n) B" }
    if n < 1 << 20 { return String(format: "%.1f KiB", Double(n) / 1024) }
    return String(format: "%.1f MiB", Double(n) / 1_048_576)
}
