import CSpoolshipSystemd
import Foundation
import Glibc
import Logging
import Synchronization

/// The service manager's side of things, through libsystemd: readiness and status
/// (sd_notify), the watchdog, and sockets passed by socket activation. Outside systemd
/// (no NOTIFY_SOCKET, no LISTEN_FDS) every call here does nothing.
public enum Systemd {
    /// Sends a notification ("READY=1", "STATUS=...", "WATCHDOG=1", "STOPPING=1",
    /// "RELOADING=1\nMONOTONIC_USEC=..."). Without NOTIFY_SOCKET this is a no-op.
    public static func notify(_ state: String) {
        _ = sd_notify(0, state)
    }

    /// READY=1 with a status line.
    public static func ready(status: String) {
        notify("READY=1\nSTATUS=\(status)")
    }

    /// RELOADING=1, with the monotonic timestamp that newer systemd versions ask for.
    public static func reloading() {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        let usec = UInt64(ts.tv_sec) * 1_000_000 + UInt64(ts.tv_nsec) / 1000
        notify("RELOADING=1\nMONOTONIC_USEC=\(usec)")
    }

    /// The watchdog interval that the manager asked for (WATCHDOG_USEC for this pid), if any.
    public static func watchdogInterval() -> Double? {
        var usec: UInt64 = 0
        guard sd_watchdog_enabled(0, &usec) > 0, usec > 0 else { return nil }
        return Double(usec) / 1e6
    }

    /// Listening stream sockets passed by the manager (LISTEN_FDS for this pid), starting at
    /// fd 3. The environment variables are removed so that children do not see them.
    public static func listeningSockets() -> [Int32] {
        let n = sd_listen_fds(1)
        guard n > 0 else { return [] }
        return (0..<n).map { 3 + $0 }.filter { sd_is_socket($0, AF_UNSPEC, Int32(SOCK_STREAM.rawValue), 1) > 0 }
    }
}

/// Proof of progress for the watchdog. Each long-running loop of a daemon registers a name and
/// beats at every turn (its waits are bounded, so a healthy loop beats at least every few
/// seconds). The watchdog thread sends WATCHDOG=1 only while every loop has beaten within the
/// allowed time; a loop that hangs stops the pings, and the manager restarts the daemon.
public final class Heartbeats: Sendable {
    /// The process's one set: the watchdog thread is started once, whatever runs in it.
    public static let shared = Heartbeats()

    struct State {
        /// Each registered loop's last beat (monotonic seconds).
        var last: [String: Double] = [:]
        /// The stale loops already reported, until they beat again.
        var stuckReported: Set<String> = []
    }

    let state = Mutex(State())

    public init() {}

    public func beat(_ name: String) {
        let now = monotonicNow()
        state.withLock {
            $0.last[name] = now
            $0.stuckReported.remove(name)
        }
    }

    /// Beats for the calling thread, when its name is a registered loop (long work such as a
    /// checksum or a compression calls this as it goes).
    public func beatCurrentThread() {
        guard let name = Thread.current.name else { return }
        let now = monotonicNow()
        state.withLock { if $0.last[name] != nil { $0.last[name] = now } }
    }

    public func remove(_ name: String) {
        state.withLock {
            $0.last[name] = nil
            $0.stuckReported.remove(name)
        }
    }

    /// The loops that have not beaten for `limit` seconds, with how long.
    public func stale(limit: Double) -> [(String, Double)] {
        let now = monotonicNow()
        let last = state.withLock { $0.last }
        return last.filter { now - $0.value > limit }.map { ($0.key, now - $0.value) }.sorted { $0.0 < $1.0 }
    }

    /// Of `stale`, those not reported yet; they count as reported from now on.
    func newlyStuck(_ stale: [(String, Double)]) -> [(String, Double)] {
        state.withLock { s in
            let fresh = stale.filter { !s.stuckReported.contains($0.0) }
            for (n, _) in fresh { s.stuckReported.insert(n) }
            return fresh
        }
    }

    /// Starts the watchdog thread when the manager asked for one: it checks every half
    /// interval, and pings only when no loop is stale (stale: no beat for half the interval,
    /// at least `minimumStale` seconds). `status` is called at each turn for the STATUS= line.
    public func startWatchdog(logger: Logger, minimumStale: Double = 5, status: @escaping @Sendable () -> String) {
        let interval = Systemd.watchdogInterval()
        startThread("watchdog") { [self] in
            var lastStatus = ""
            while true {
                let period = interval.map { $0 / 2 } ?? 2
                let s = status()
                if s != lastStatus {
                    Systemd.notify("STATUS=\(s)")
                    lastStatus = s
                }
                if let interval = interval {
                    let stale = self.stale(limit: max(minimumStale, interval / 2))
                    if stale.isEmpty {
                        Systemd.notify("WATCHDOG=1")
                    } else {
                        for (n, age) in newlyStuck(stale) {
                            logger.critical("a thread made no progress; not pinging the watchdog", metadata: ["thread": "\(n)", "seconds": "\(Int(age))"])
                        }
                    }
                }
                usleep(UInt32(min(period, 2) * 1_000_000))
            }
        }
    }
}
