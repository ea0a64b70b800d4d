import Foundation
import Glibc
import Logging
import SpoolshipCore
import SpoolshipIO
import SpoolshipDaemon
import Synchronization

/// The open directories of the agent's spools: each spool's own, and each log spool's
/// directory of rotated files (`DIR/.spoolship`). Every file the agent touches is opened
/// beneath one of these, never by a path string.
///
/// Who changes what: the blob watcher replaces a spool's handles when its directory was
/// removed and made again (`reopenReplaced`); the log rotator replaces a directory of rotated
/// files that someone removed (`replaceRotated`). Everyone else only reads.
final class SpoolDirectories: Sendable {
    private struct Handles {
        var spool: [String: OwnedFD] = [:]
        var rotated: [String: OwnedFD] = [:]
        /// Spools whose directory is gone (reported once).
        var missing: Set<String> = []
    }
    private let handles: Mutex<Handles>
    private let spools: [SpoolConfig]

    /// Opens every spool's directory (and makes each log spool's directory of rotated files),
    /// checking that no directory is configured twice.
    init(_ config: AgentConfig) throws {
        spools = config.spools
        var h = Handles()
        h.spool = try Self.open(config)
        for s in config.spools where s.logs != nil && s.logs?.follows == false {
            do {
                h.rotated[s.name] = try Files.ensureDirectory(h.spool[s.name]!, LogNames.rotatedDirName, label: "\(s.directory)/\(LogNames.rotatedDirName)", mode: 0o700)
            } catch {
                throw DaemonError("log spool \(s.name): cannot make its directory of rotated files: \(error)")
            }
        }
        handles = Mutex(h)
    }

    /// Checks a configuration's spools and opens their directories: valid agent id, spool
    /// names and globs, each directory openable, none configured twice.
    @discardableResult
    static func open(_ config: AgentConfig) throws -> [String: OwnedFD] {
        try Names.validateIdentifier(config.agentID, what: "agent id")
        var dirs: [String: OwnedFD] = [:]
        var seen: [String: String] = [:]
        for s in config.spools {
            try Names.validateIdentifier(s.name, what: "spool name")
            guard dirs[s.name] == nil else { throw DaemonError("spool \(s.name) is configured twice") }
            if let l = s.logs { try LogNames.validateGlob(l.glob) }
            let fd: OwnedFD
            do { fd = try Files.openDirectory(s.directory) } catch {
                throw DaemonError("spool \(s.name): cannot open its directory \(s.directory): \(error)")
            }
            let st = try Files.fstat(fd)
            let identity = "\(st.st_dev):\(st.st_ino)"
            if let other = seen[identity] {
                throw DaemonError("spools \(other) and \(s.name) watch the same directory \(s.directory); give each spool its own")
            }
            seen[identity] = s.name
            dirs[s.name] = fd
        }
        return dirs
    }

    func spool(_ name: String) -> OwnedFD? { handles.withLock { $0.spool[name] } }
    func rotated(_ name: String) -> OwnedFD? { handles.withLock { $0.rotated[name] } }
    /// Both directories of a log spool.
    func logDirectories(_ name: String) -> (spool: OwnedFD, rotated: OwnedFD)? {
        handles.withLock { h in
            guard let d = h.spool[name], let r = h.rotated[name] else { return nil }
            return (d, r)
        }
    }

    /// The directory that holds a segment's file: the spool's own for blobs, the rotated
    /// directory for log segments.
    /// The directory that holds a segment's file: the rotated directory for a rotated log
    /// file, else the spool's own (a followed file's range is read from its descriptor, but
    /// its spool must still be configured).
    func holding(_ s: Segment) -> OwnedFD? { s.kind == .log && !s.isFollowed ? rotated(s.spool) : spool(s.spool) }

    func replaceRotated(_ name: String, _ fd: OwnedFD) { handles.withLock { $0.rotated[name] = fd } }

    /// Spools whose directory was removed (or moved away) and exists again at its path: their
    /// handles are replaced, so that they are watched and shipped again. The blob watcher
    /// calls it every second.
    func reopenReplaced(logger: Logger) -> [SpoolConfig] {
        var back: [SpoolConfig] = []
        for spool in spools {
            guard let fd = self.spool(spool.name), let cur = try? Files.fstat(fd) else { continue }
            let atPath = try? Files.status(spool.directory)
            if cur.st_nlink > 0, let st = atPath, st.device == UInt64(cur.st_dev) && st.inode == UInt64(cur.st_ino) { continue }
            guard atPath != nil, let fresh = try? Files.openDirectory(spool.directory) else {
                if handles.withLock({ $0.missing.insert(spool.name).inserted }) {
                    logger.error("spool directory is gone; waiting for it to come back", metadata: ["spool.name": "\(spool.name)", "path": "\(spool.directory)"])
                }
                continue
            }
            var rotated: OwnedFD?
            if spool.logs != nil && spool.logs?.follows == false {
                do {
                    rotated = try Files.ensureDirectory(fresh, LogNames.rotatedDirName, label: "\(spool.directory)/\(LogNames.rotatedDirName)", mode: 0o700)
                } catch {
                    if handles.withLock({ $0.missing.insert(spool.name).inserted }) {
                        logger.error("cannot make the directory of rotated files", metadata: ["spool.name": "\(spool.name)", "error": "\(error)"])
                    }
                    continue
                }
            }
            logger.notice("spool directory is back; watching it again", metadata: ["spool.name": "\(spool.name)", "path": "\(spool.directory)"])
            handles.withLock { h in
                h.missing.remove(spool.name)
                h.spool[spool.name] = fresh
                if let r = rotated { h.rotated[spool.name] = r }
            }
            back.append(spool)
        }
        return back
    }
}
