import Foundation
import Glibc

/// A one-line progress bar on standard error, drawn only when standard error is a terminal.
/// While one is shown, log lines written to standard error erase it first and draw it again
/// after themselves, so that the two do not run into each other.
///
/// `@unchecked Sendable`: `line` and `lastDraw` are read and written only with `lock` held,
/// which is also held around each log line written while the bar is shown (`aroundLogLine`).
public final class TerminalProgress: @unchecked Sendable {
    public static let shown = Locked<TerminalProgress?>(nil)
    private let lock = NSLock()
    private var line = ""
    private var lastDraw = -Double.infinity

    private init() {}

    /// A bar when standard error is a terminal; nil otherwise (then nothing extra is printed).
    public static func startIfTerminal() -> TerminalProgress? {
        guard isatty(STDERR_FILENO) == 1 else { return nil }
        let p = TerminalProgress()
        shown.withLock { $0 = p }
        return p
    }

    /// Draws `text`, at most every 100 ms unless `force`.
    public func draw(_ text: String, force: Bool = false) {
        lock.lock()
        defer { lock.unlock() }
        let now = monotonicNow()
        guard force || now - lastDraw >= 0.1 else { return }
        lastDraw = now
        line = text
        Self.write("\r\(text)\u{1B}[K")
    }

    /// Ends the bar: left on screen as last drawn (`keep`), or erased.
    public func finish(keep: Bool) {
        Self.shown.withLock { if $0 === self { $0 = nil } }
        lock.lock()
        defer { lock.unlock() }
        if lastDraw == -Double.infinity { return }
        Self.write(keep ? "\r\(line)\u{1B}[K\n" : "\r\u{1B}[K")
    }

    /// `[#####     ]` for a fraction from 0 to 1.
    public static func bar(_ fraction: Double, width: Int = 30) -> String {
        let full = max(0, min(width, Int((fraction.isFinite ? fraction : 0) * Double(width))))
        return "[" + String(repeating: "#", count: full) + String(repeating: " ", count: width - full) + "]"
    }

    public static func mib(_ bytes: UInt64) -> String { String(format: "%.1f", Double(bytes) / 1_048_576) }

    /// Runs `body` (which writes a log line to standard error) with the bar erased around it.
    public static func aroundLogLine(_ body: () -> Void) {
        guard let p = shown.withLock({ $0 }) else { return body() }
        p.lock.lock()
        defer { p.lock.unlock() }
        write("\r\u{1B}[K")
        body()
        if p.lastDraw != -Double.infinity { write("\r\(p.line)\u{1B}[K") }
    }

    /// Writes all of `s` to `fd` (standard error by default) with write(2), retrying EINTR;
    /// gives up quietly on a closed or broken output.
    public static func write(_ s: String, fd: Int32 = STDERR_FILENO) {
        var bytes = Array(s.utf8)
        var off = 0
        while off < bytes.count {
            let n = bytes.withUnsafeMutableBytes { Glibc.write(fd, $0.baseAddress! + off, $0.count - off) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { return }
            off += n
        }
    }
}
