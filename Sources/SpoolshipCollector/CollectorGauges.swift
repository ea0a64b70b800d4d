import CoreMetrics
import Foundation
import Glibc
import SpoolshipDaemon
import SpoolshipIO

/// The collector's gauges, set from its status (`update`) on each metrics scrape.
public final class CollectorGauges: Sendable {
    private let agents, partials, partialBytes, free, reserve: CoreMetrics.Gauge
    private let byPath: [(String, CoreMetrics.Gauge)]

    public init(factory: any MetricsFactory) {
        agents = CoreMetrics.Gauge(label: "spoolship_collector_connected_agents", factory: factory)
        partials = CoreMetrics.Gauge(label: "spoolship_collector_partials", factory: factory)
        partialBytes = CoreMetrics.Gauge(label: "spoolship_collector_partial_bytes", factory: factory)
        free = CoreMetrics.Gauge(label: "spoolship_collector_free_bytes", factory: factory)
        reserve = CoreMetrics.Gauge(label: "spoolship_collector_free_space_reserve_bytes", factory: factory)
        byPath = Link.Path.allCases.map { p in
            (p.rawValue, CoreMetrics.Gauge(label: "spoolship_collector_connected_agents_by_path", dimensions: [("path", p.rawValue)], factory: factory))
        }
    }

    public func update(_ s: CollectorStatus) {
        agents.record(s.agents.count)
        for (name, g) in byPath { g.record(s.agents.filter { $0.path == name }.count) }
        partials.record(s.totals.partials)
        partialBytes.record(Double(s.totals.partialBytes))
        if let f = s.disk.freeBytes { free.record(Double(f)) }
        reserve.record(Double(s.disk.reserveBytes))
    }
}
