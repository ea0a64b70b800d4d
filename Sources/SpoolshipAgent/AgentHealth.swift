import Foundation
import SpoolshipDaemon
import SpoolshipIO
import Synchronization

/// What the agent reports about itself beside its segments: the connection, the last error,
/// and why a run cannot finish as asked. Any thread may say something here; status and the
/// `--once` verdict read it.
final class AgentHealth: Sendable {
    struct State: Sendable {
        /// The collector's id while a connection is set up, and since when (wall clock).
        var connectedTo: String?
        var connectedSince: Double?
        /// The connection's transport (`Link.transport`) and the path of what it sends.
        var transport: String?
        var path: Link.Path?
        var lastError: String?
        var lastErrorTime: Double?
        /// The last connection ended with ERROR 10 (agent id in use): wait at least 5 s.
        var lastIDInUse = false
        /// Why the run cannot finish as asked: files that could not be sealed or recorded (a
        /// `--once` run must not report success).
        var incomplete: String?
        /// Why the agent must stop (a failed spool watcher).
        var fatal: String?
    }
    private let state = Mutex(State())

    func read() -> State { state.withLock { $0 } }
    func update(_ body: (inout State) -> Void) { state.withLock { body(&$0) } }

    /// An error for `spoolship status` (and the status line while not connected).
    func error(_ e: String, at time: Bool = false) {
        state.withLock {
            $0.lastError = e
            if time { $0.lastErrorTime = Date().timeIntervalSince1970 }
        }
    }
}

/// The socket of the connection under way, which a stop shuts down at once: a DATA frame
/// under way is cut, and the collector keeps what arrived (the next start resumes from it).
final class ConnectionSlot: Sendable {
    private struct Slot {
        var socket: Socket?
        var stopped = false
    }
    private let slot = Mutex(Slot())

    /// The session's socket, from its connect to its close.
    func hold(_ s: Socket) {
        let stopped = slot.withLock { $0.socket = s; return $0.stopped }
        if stopped { s.shutdown() }
    }

    func release() { slot.withLock { $0.socket = nil } }

    /// Shuts the socket down (under the lock: the session releases it before closing the fd).
    func stop() {
        slot.withLock { s in
            s.stopped = true
            s.socket?.shutdown()
        }
    }
}
