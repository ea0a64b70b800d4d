import Foundation
import Glibc
import SpoolshipDaemon

/// Long work (a checksum, a compression) given up because the agent is stopping.
struct StoppedWork: Error {}

/// An agent's threads and its stop: every thread of the agent is started here and counted,
/// so that a stop can wait for all of them (a new agent in the same process, after a reload,
/// never shares the state dir with an old one's threads). A stop wakes whoever sleeps here
/// at once, and calls the wake-ups the owners registered (an inotify read, a condition wait).
///
/// `@unchecked Sendable`: every stored `var` is read and written only while holding `cond`.
final class AgentThreads: @unchecked Sendable {
    private let cond = NSCondition()
    private var stopped = false
    private var live = 0
    private var wakers: [@Sendable () -> Void] = []
    var heartbeats: Heartbeats { Heartbeats.shared }

    var isStopped: Bool { cond.lock(); defer { cond.unlock() }; return stopped }

    /// Calls `w` when the agent stops (at once if it has).
    func onStop(_ w: @escaping @Sendable () -> Void) {
        cond.lock()
        wakers.append(w)
        let now = stopped
        cond.unlock()
        if now { w() }
    }

    /// Stops: sets the flag, wakes every sleeper and calls the wake-ups. Idempotent.
    func stop() {
        cond.lock()
        stopped = true
        let w = wakers
        cond.broadcast()
        cond.unlock()
        for f in w { f() }
    }

    /// Starts a thread of this agent, counted until it ends, beating under its own name
    /// (which is forgotten when it ends).
    func spawn(_ name: String, _ body: @escaping @Sendable () -> Void) {
        cond.lock()
        live += 1
        cond.unlock()
        heartbeats.beat(name)
        startThread(name) { [self] in
            body()
            heartbeats.remove(name)
            cond.lock()
            live -= 1
            cond.broadcast()
            cond.unlock()
        }
    }

    var running: Int { cond.lock(); defer { cond.unlock() }; return live }

    /// Waits up to `timeout` seconds for every thread to end; returns how many still run.
    func waitForAll(timeout: Double) -> Int {
        cond.lock()
        defer { cond.unlock() }
        let until = Date(timeIntervalSinceNow: timeout)
        while live > 0 { if !cond.wait(until: until) { break } }
        return live
    }

    /// Sleeps `seconds`, or less if the agent stops meanwhile, beating `beat` every second.
    func pause(_ seconds: Double, beat: String? = nil) {
        cond.lock()
        defer { cond.unlock() }
        let until = Date(timeIntervalSinceNow: seconds)
        while !stopped {
            if let b = beat { heartbeats.beat(b) }
            if !cond.wait(until: min(until, Date(timeIntervalSinceNow: 1))) && Date() >= until { break }
        }
    }

    /// For long work on the agent's threads: proves progress to the watchdog, and gives up
    /// (StoppedWork) once the agent is stopping.
    func workProgress() throws {
        heartbeats.beatCurrentThread()
        if isStopped { throw StoppedWork() }
    }
}
