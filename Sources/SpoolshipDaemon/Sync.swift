import Foundation

/// A lock around a value, for state shared between a daemon's threads.
///
/// `@unchecked Sendable`: `value` is read and written only inside `withLock`, under `lock`,
/// and is itself Sendable. (A class, unlike `Mutex`, can be shared by reference as a `let`
/// of another class and captured by escaping closures.)
public final class Locked<Value: Sendable>: @unchecked Sendable {
    private let lock = NSLock()
    private var value: Value
    public init(_ value: Value) { self.value = value }
    public func withLock<R>(_ body: (inout Value) throws -> R) rethrows -> R {
        lock.lock()
        defer { lock.unlock() }
        return try body(&value)
    }
}

/// Starts a named thread (the data path runs on threads of its own, never on Swift's
/// cooperative pool, because it blocks in sendfile, splice and fsync).
@discardableResult
public func startThread(_ name: String, stackSize: Int = 1 << 20, _ body: @escaping @Sendable () -> Void) -> Thread {
    let t = Thread(block: body)
    t.name = name
    t.stackSize = stackSize
    t.start()
    return t
}

/// Seconds on the monotonic clock.
public func monotonicNow() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}

/// A one-shot flag that threads can wait on.
///
/// `@unchecked Sendable`: `done` is read and written only with `cond` locked (a `Mutex` has
/// no condition to wait on with a deadline).
public final class Latch: @unchecked Sendable {
    private let cond = NSCondition()
    private var done = false
    public init() {}
    public func open() {
        cond.lock(); done = true; cond.broadcast(); cond.unlock()
    }
    public var isOpen: Bool { cond.lock(); defer { cond.unlock() }; return done }
    /// Waits up to `timeout` seconds; returns whether the latch is open.
    @discardableResult
    public func wait(timeout: Double) -> Bool {
        cond.lock(); defer { cond.unlock() }
        let deadline = Date(timeIntervalSinceNow: timeout)
        while !done { if !cond.wait(until: deadline) { break } }
        return done
    }
}
