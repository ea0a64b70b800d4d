import Foundation
import Glibc
import Logging
import SpoolshipCore
import SpoolshipIO
import SpoolshipDaemon
import Synchronization

/// A file in a spool that the agent will not ship: why, and its name as bytes (a name that
/// is not valid UTF-8 has no String of its own).
struct LeftBehind: Sendable {
    var spool: String
    var raw: [UInt8]
    var display: String
    var reason: String
    /// In a log spool's directory of rotated files, not in the spool's own.
    var rotated = false
}

/// The files of the spools that will not ship (bad name, not a regular file, unreadable,
/// refused by the collector), and the names not to try again until the agent restarts. Each
/// is named once in the log (error), counted in `spoolship status` and the metrics, and a
/// reason for `--once` to fail. Forgotten once the file is gone (`prune`).
///
/// Written by the blob watcher, the log rotator and the session (a collector's refusal); it
/// is its own owner, behind one lock.
final class LeftBehindFiles: Sendable {
    private struct Registry {
        /// By `spool/name`.
        var files: [String: LeftBehind] = [:]
        /// Names not tried again until restart (a file left behind without `retry`, and log
        /// streams whose names cannot ship), by `spool/name`.
        var refused: Set<String> = []
    }
    private let registry = Mutex(Registry())
    private let logger: Logger
    private let stats: AgentStats

    init(logger: Logger, stats: AgentStats) {
        self.logger = logger
        self.stats = stats
    }

    /// Records a file that will not ship. Not tried again until the agent restarts, unless
    /// `retry` (its next event or scan tries again).
    func leave(spool: String, name: String?, raw: [UInt8], reason: String, retry: Bool = false) {
        let display = FileName.display(raw)
        let key = "\(spool)/\(name ?? display)"
        let first: Bool = registry.withLock { r in
            if !retry { r.refused.insert(key) }
            if r.files[key]?.reason == reason { return false }
            r.files[key] = LeftBehind(spool: spool, raw: raw, display: display, reason: reason)
            return true
        }
        guard first else { return }
        stats.error(.unshippable)
        logger.error("file cannot be shipped; leaving it in place", metadata: [
            "spool.name": "\(spool)", "segment.name": .stringConvertible(EscapedText(display)), "reason": "\(reason)"])
    }

    /// A segment the collector will never take: the file stays and is not offered again.
    func refusedByCollector(_ s: Segment, reason: String) {
        let key = "\(s.spool)/\(s.name)"
        registry.withLock { r in
            r.refused.insert(key)
            r.files[key] = LeftBehind(spool: s.spool, raw: Array(s.name.utf8), display: FileName.display(Array(s.name.utf8)),
                                      reason: "the collector refused it: \(reason)", rotated: s.kind == .log)
        }
    }

    /// Marks a name as not to be tried again, without a file to report (a log stream whose
    /// segment names cannot ship). Returns whether it is new.
    func refuse(_ key: String) -> Bool { registry.withLock { $0.refused.insert(key).inserted } }
    func isRefused(_ key: String) -> Bool { registry.withLock { $0.refused.contains(key) } }
    /// The file under `key` was sealed after all: it is no longer left behind.
    func sealed(_ key: String) { registry.withLock { _ = $0.files.removeValue(forKey: key) } }

    /// Forgets the files left behind that are no longer there (removed or renamed by someone).
    func prune(_ dirs: SpoolDirectories) {
        let entries = registry.withLock { $0.files }
        for (key, e) in entries {
            guard let dir = e.rotated ? dirs.rotated(e.spool) : dirs.spool(e.spool) else { continue }
            if (try? Files.statAt(dir, rawName: e.raw)) ?? nil == nil {
                registry.withLock { r in
                    r.files[key] = nil
                    _ = r.refused.remove(key)
                }
            }
        }
    }

    var all: [LeftBehind] {
        registry.withLock { Array($0.files.values) }.sorted { ($0.spool, $0.display) < ($1.spool, $1.display) }
    }
    var isEmpty: Bool { registry.withLock { $0.files.isEmpty } }
}
