import Foundation
import Glibc

/// Blocks SIGTERM, SIGINT and SIGHUP in every thread and hands them to one thread that waits
/// for them with sigwait(3). Call before starting any other thread. SIGPIPE is ignored: a
/// peer that goes away shows as EPIPE on the call that wrote to it.
public enum Signals {
    /// A signal by name ("HUP", "SIGUSR1", "usr2") or number; nil for anything else.
    public static func number(_ name: String) -> Int32? {
        if let n = Int32(name), n > 0, n < 65 { return n }
        var n = name.uppercased()
        if n.hasPrefix("SIG") { n = String(n.dropFirst(3)) }
        let table: [String: Int32] = [
            "HUP": SIGHUP, "INT": SIGINT, "QUIT": SIGQUIT, "TERM": SIGTERM, "USR1": SIGUSR1, "USR2": SIGUSR2,
            "ALRM": SIGALRM, "CONT": SIGCONT, "WINCH": SIGWINCH, "KILL": SIGKILL, "STOP": SIGSTOP,
        ]
        return table[n]
    }

    public static func handle(_ body: @escaping @Sendable (Int32) -> Void) {
        signal(SIGPIPE, SIG_IGN)
        // The agent takes a read lease for an instant to learn whether a file has writers; a
        // writer opening the file in that instant makes the kernel send SIGIO (lease break),
        // whose default action would end the process.
        signal(SIGIO, SIG_IGN)
        var set = sigset_t()
        sigemptyset(&set)
        sigaddset(&set, SIGTERM)
        sigaddset(&set, SIGINT)
        sigaddset(&set, SIGHUP)
        pthread_sigmask(SIG_BLOCK, &set, nil)
        let waitSet = set
        startThread("signals") {
            var s = waitSet
            while true {
                var sig: Int32 = 0
                if sigwait(&s, &sig) == 0 { body(sig) }
            }
        }
    }
}
