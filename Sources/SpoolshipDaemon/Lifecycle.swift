import Glibc
import Logging
import Synchronization

/// A part of a daemon that serves on threads of its own once started, until `stop()`: the
/// control socket, the metrics listener. `stop()` returns once it no longer serves.
public protocol DaemonService: AnyObject, Sendable {
    func stop()
}

extension ControlServer: DaemonService {}
extension MetricsServer: DaemonService {}

/// One runner for the life of both daemons, after swift-service-lifecycle's `ServiceGroup`
/// (`Sources/ServiceLifecycle/ServiceGroup.swift`), on threads instead of tasks:
///
/// - signals: SIGTERM and SIGINT ask for a stop, SIGHUP for a reload (`takeSignals`), taken by
///   one `signals` thread with sigwait(3) (`Signals.handle`);
/// - the main service (the agent or the collector) runs on the calling thread inside `run`;
///   what stops it is set with `whileRunning(stop:)`. A stop asked for before that (a SIGTERM
///   during start-up) is remembered and delivered as soon as it is set;
/// - the services started beside it (`add`) are stopped in reverse order of start once the
///   main service returns, whatever it returned or threw, or a start failed half-way;
/// - the watchdog (`startWatchdog`) pings the service manager while every loop beats.
///
/// Every field is behind one `Mutex`; stop handlers and services are called outside it.
public final class DaemonLifecycle: Sendable {
    struct State {
        var stopRequested = false
        var stopMain: (@Sendable () -> Void)?
        var services: [any DaemonService] = []
    }

    let state = Mutex(State())

    public init() {}

    /// Takes SIGTERM and SIGINT (`requestStop()`) and SIGHUP (`reload`, called on the signal
    /// thread), and ignores SIGPIPE and SIGIO. Call it before any other thread starts: threads
    /// inherit the blocked signals from the one that starts them.
    public func takeSignals(reload: @escaping @Sendable () -> Void) {
        Signals.handle { [self] sig in
            if sig == SIGHUP { reload() } else { requestStop() }
        }
    }

    /// A stop: remembered for good, and passed to the running main service if any.
    public func requestStop() {
        let stop = state.withLock { s -> (@Sendable () -> Void)? in
            s.stopRequested = true
            return s.stopMain
        }
        stop?()
    }

    /// Whether a stop was asked for.
    public var isStopping: Bool { state.withLock { $0.stopRequested } }

    /// What stops the main service that now runs (nil once none runs). When a stop was asked
    /// for already, `stop` is called at once.
    public func whileRunning(stop: (@Sendable () -> Void)?) {
        let already = state.withLock { s -> Bool in
            s.stopMain = stop
            return s.stopRequested
        }
        if already { stop?() }
    }

    /// A service that has started: stopped after the main service, in reverse order of `add`.
    public func add(_ service: any DaemonService) {
        state.withLock { $0.services.append(service) }
    }

    /// Stops the services added so far, the last added first, each once.
    public func stopServices() {
        while let s = state.withLock({ $0.services.popLast() }) {
            s.stop()
        }
    }

    /// Runs `main` (the start of the services and the main service) on the calling thread,
    /// then stops the services in reverse order, whatever `main` returned or threw.
    public func run<R>(_ main: () throws -> R) rethrows -> R {
        defer { stopServices() }
        return try main()
    }

    /// Starts the watchdog thread (`Heartbeats.startWatchdog`): STATUS= lines from `status`,
    /// and WATCHDOG=1 while no loop is stale for `minimumStale` seconds or half the interval.
    public func startWatchdog(logger: Logger, minimumStale: Double, heartbeats: Heartbeats = .shared,
                              status: @escaping @Sendable () -> String) {
        heartbeats.startWatchdog(logger: logger, minimumStale: minimumStale, status: status)
    }
}
