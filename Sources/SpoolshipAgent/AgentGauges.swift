import CoreMetrics
import Foundation
import Glibc
import SpoolshipDaemon
import SpoolshipIO

/// The gauges of the live state, set from a status snapshot just before each scrape, so that
/// `/metrics` and `spoolship status` read the same figures.
///
/// `@unchecked Sendable`: scrapes come on the metrics server's threads; `perSpool` and
/// `lastUpdate` change only while holding `lock`, and the gauges are thread-safe.
public final class AgentGauges: @unchecked Sendable {
    private let factory: any MetricsFactory
    private let lock = NSLock()
    private var perSpool: [String: (segments: CoreMetrics.Gauge, bytes: CoreMetrics.Gauge, age: CoreMetrics.Gauge, rotated: CoreMetrics.Gauge, unshippable: CoreMetrics.Gauge)] = [:]
    private let connected: CoreMetrics.Gauge
    /// By the path of the payload (tcp, tls, ktls): 1 for the connection's, 0 for the others.
    private let paths: [(String, CoreMetrics.Gauge)]

    private var lastUpdate = -Double.infinity

    public init(factory: any MetricsFactory) {
        self.factory = factory
        connected = CoreMetrics.Gauge(label: "spoolship_agent_connected", factory: factory)
        paths = Link.Path.allCases.map { p in
            (p.rawValue, CoreMetrics.Gauge(label: "spoolship_agent_connection_path", dimensions: [("path", p.rawValue)], factory: factory))
        }
    }

    /// Sets the gauges from `status()` at most once a second: the agent's status walks its
    /// whole backlog (under its parts' locks), and scrapers asking in a loop must not hold up the
    /// data path. (The counters are always current.)
    public func updateIfDue(_ status: () -> AgentStatus) {
        let now = monotonicNow()
        lock.lock()
        let due = now - lastUpdate >= 1
        if due { lastUpdate = now }
        lock.unlock()
        if due { update(status()) }
    }

    private func update(_ s: AgentStatus) {
        lock.lock()
        defer { lock.unlock() }
        connected.record(s.connection.state == "connected" ? 1 : 0)
        for (name, g) in paths { g.record(s.connection.path == name ? 1 : 0) }
        for sp in s.spools {
            if perSpool[sp.name] == nil {
                let d = [("spool", sp.name)]
                perSpool[sp.name] = (CoreMetrics.Gauge(label: "spoolship_agent_pending_segments", dimensions: d, factory: factory),
                                     CoreMetrics.Gauge(label: "spoolship_agent_pending_bytes", dimensions: d, factory: factory),
                                     CoreMetrics.Gauge(label: "spoolship_agent_oldest_pending_age_seconds", dimensions: d, factory: factory),
                                     CoreMetrics.Gauge(label: "spoolship_agent_rotated_files_to_seal", dimensions: d, factory: factory),
                                     CoreMetrics.Gauge(label: "spoolship_agent_unshippable_files", dimensions: d, factory: factory))
            }
            let g = perSpool[sp.name]!
            g.segments.record(sp.pendingSegments)
            g.bytes.record(Double(sp.pendingBytes))
            g.age.record(sp.oldestPendingAgeSeconds ?? 0)
            g.rotated.record(sp.rotatedToSeal)
            g.unshippable.record(sp.unshippable)
        }
        // A spool that a reload removed has nothing pending here any more: its gauges go to
        // zero instead of keeping their last values (which would hold an alert for ever).
        let present = Set(s.spools.map(\.name))
        for (name, g) in perSpool where !present.contains(name) {
            g.segments.record(0)
            g.bytes.record(0)
            g.age.record(0)
            g.rotated.record(0)
            g.unshippable.record(0)
        }
    }
}
