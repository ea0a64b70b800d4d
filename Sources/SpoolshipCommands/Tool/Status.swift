import ArgumentParser
import Foundation
import Glibc
import SpoolshipDaemon
import SpoolshipAgent
import SpoolshipCollector
import SpoolshipIO

struct Status: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Ask running daemons what is flowing and what is stuck.",
        discussion: """
        Asks each daemon over its control socket. Without --socket: \(ControlSocketPath.defaultDirectory)/agent.sock and \
        \(ControlSocketPath.defaultDirectory)/collector.sock, those that exist. Exits 1 when a daemon asked does not answer. \
        With --json, each daemon's answer on one line (one JSON document a daemon; docs/PROTOCOL.md).
        """)

    @Option(name: .customLong("socket"), help: ArgumentHelp("A daemon's control socket; may repeat.", valueName: "path"))
    var sockets: [String] = []

    @Flag(help: "Print each daemon's status as a JSON document, one a line.")
    var json = false

    @Option(help: ArgumentHelp("Seconds to wait for each daemon's answer.", valueName: "seconds"))
    var timeout: Double = 5

    func validate() throws {
        guard timeout > 0, timeout.isFinite else { throw ValidationError("--timeout must be a positive number of seconds") }
        for s in sockets where s.isEmpty || s.utf8.count > Socket.maxUnixPath {
            throw ValidationError("--socket must be a path of 1 to \(Socket.maxUnixPath) bytes; got '\(s)'")
        }
    }

    func run() throws {
        var paths = sockets
        if paths.isEmpty {
            let defaults = ["agent", "collector"].map { "\(ControlSocketPath.defaultDirectory)/\($0).sock" }
            // A directory the caller may not search (/run/spoolship is 0700) hides the socket:
            // asking it then says "permission denied", which is the truth to tell.
            paths = defaults.filter { path in
                do { return try Files.linkStatus(path) != nil } catch let e as SyscallError { return e.errno == EACCES } catch { return false }
            }
            if paths.isEmpty {
                fail("no spoolship daemon to ask: neither \(defaults[0]) nor \(defaults[1]) exists (is a daemon running here? give --socket PATH for a control socket elsewhere)")
                throw ExitCode(1)
            }
        }
        var failed = false
        var first = true
        for path in paths {
            let data: Data
            do {
                data = try Self.ask(path, timeout: timeout)
            } catch {
                fail(Self.explain(error, path: path, timeout: timeout))
                failed = true
                continue
            }
            let decoder = StatusFormat.decoder()
            do {
                let header = try decoder.decode(StatusHeader.self, from: data)
                if let e = header.error { throw DaemonError("the \(header.daemon) at \(path) answered with an error: \(e)") }
                guard header.version == StatusFormat.version else {
                    throw DaemonError("the \(header.daemon) at \(path) answers in status format \(header.version); this spoolship reads format \(StatusFormat.version)")
                }
                if json {
                    print(String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines))
                    continue
                }
                if !first { print("") }
                first = false
                switch header.daemon {
                case "agent": print(StatusView.agent(try decoder.decode(AgentStatus.self, from: data)), terminator: "")
                case "collector": print(StatusView.collector(try decoder.decode(CollectorStatus.self, from: data)), terminator: "")
                default: throw DaemonError("\(path) answered for an unknown kind of daemon '\(header.daemon)'")
                }
            } catch let e as DaemonError {
                fail(e.description)
                failed = true
            } catch {
                fail("\(path) answered something that is not a spoolship status document (\(error))")
                failed = true
            }
        }
        if failed { throw ExitCode(1) }
    }

    private func fail(_ message: String) {
        FileHandle.standardError.write(Data("spoolship status: \(message)\n".utf8))
    }

    /// Sends `status` and reads the answer to its end (at most 16 MiB, within `timeout`).
    static func ask(_ path: String, timeout: Double) throws -> Data {
        let s = try Socket.connectUnix(path, timeout: timeout)
        defer { try? s.fd.close() }
        try s.sendAll(Array("status\n".utf8))
        let deadline = monotonicNow() + timeout
        var out: [UInt8] = []
        while true {
            let left = deadline - monotonicNow()
            if left <= 0 { throw SyscallError(call: "recv", path: path, errno: ETIMEDOUT) }
            s.setTimeouts(receive: left, send: left)
            let chunk = try s.receive(max: 64 * 1024)
            if chunk.isEmpty { break }
            out += chunk
            if out.count > 16 << 20 { throw DaemonError("the answer from \(path) is larger than 16 MiB") }
        }
        return Data(out)
    }

    static func explain(_ error: Error, path: String, timeout: Double) -> String {
        guard let e = error as? SyscallError else { return "\(path): \(error)" }
        switch e.errno {
        case ENOENT: return "nothing answers at \(path): no such socket (is the daemon running, with this --control-socket?)"
        case ECONNREFUSED: return "nothing answers at \(path): connection refused (the socket file is left from a daemon that is not running)"
        case EACCES, EPERM: return "cannot ask \(path): permission denied (the control socket is owner-only: run this as the daemon's user or as root)"
        case ETIMEDOUT: return "\(path) did not answer within \(timeout) s (the daemon may be overloaded or stuck)"
        case ENOTSOCK: return "\(path) is not a socket"
        default: return "cannot ask \(path): \(e)"
        }
    }
}

/// The human view: what flows, what waits, what is wrong, in a few lines.
enum StatusView {
    static func bytes(_ n: UInt64) -> String {
        if n < 1024 { return "\(n) B" }
        let units = ["KiB", "MiB", "GiB", "TiB", "PiB"]
        var v = Double(n) / 1024
        var i = 0
        while v >= 1024 && i < units.count - 1 { v /= 1024; i += 1 }
        return String(format: "%.1f %@", v, units[i])
    }

    static func rate(_ bps: Double) -> String { "\(bytes(UInt64(max(0, bps))))/s" }

    /// `42s`, `4m 12s`, `3h 05m`, `2d 04h`.
    static func age(_ s: Double) -> String {
        let t = Int(max(0, s).rounded(.down))
        if t < 60 { return "\(t)s" }
        if t < 3600 { return "\(t / 60)m \(String(format: "%02d", t % 60))s" }
        if t < 86400 { return "\(t / 3600)h \(String(format: "%02d", t % 3600 / 60))m" }
        return "\(t / 86400)d \(String(format: "%02d", t % 86400 / 3600))h"
    }

    static func plural(_ n: Int, _ word: String) -> String { "\(n) \(word)\(n == 1 ? "" : "s")" }
    static func plural(_ n: UInt64, _ word: String) -> String { plural(Int(clamping: n), word) }

    static func table(_ rows: [[String]], indent: String) -> String {
        guard let width = rows.map(\.count).max() else { return "" }
        var widths = [Int](repeating: 0, count: width)
        for r in rows { for (i, c) in r.enumerated() { widths[i] = max(widths[i], c.count) } }
        return rows.map { r in
            indent + r.enumerated().map { i, c in i == r.count - 1 ? c : c.padding(toLength: widths[i], withPad: " ", startingAt: 0) }
                .joined(separator: "  ").trimmingCharacters(in: .whitespaces)
        }.joined(separator: "\n") + "\n"
    }

    static func errors(_ e: [String: UInt64]) -> String? {
        let nonzero = e.filter { $0.value > 0 }.sorted { $0.key < $1.key }
        return nonzero.isEmpty ? nil : nonzero.map { "\($0.key) \($0.value)" }.joined(separator: ", ")
    }

    static func agent(_ s: AgentStatus) -> String {
        var out = "agent \(s.agentId) (pid \(s.pid), up \(age(s.uptimeSeconds))): \(s.state)\n"
        let c = s.connection
        if c.state == "connected" {
            out += "  collector \(s.collector): connected to \(LogText.escaped(c.collectorId ?? "?")) for \(age(c.connectedSeconds ?? 0))\n"
            if let t = c.transport { out += "  transport: \(t)\n" }
        } else {
            out += "  collector \(s.collector): NOT CONNECTED\n"
        }
        if let e = c.lastError {
            out += "  last error \(c.lastErrorAgeSeconds.map { age($0) + " ago" } ?? ""): \(LogText.escaped(e))\n"
        }
        let t = s.totals
        out += "  flowing: \(rate(t.sendRateBytesPerSecond)) sent, \(rate(t.shipRateBytesPerSecond)) acknowledged (last 10 s)\n"
        var since = "  shipped since start: \(plural(t.shippedSegments, "segment")), \(bytes(t.shippedBytes)); \(plural(t.reconnects, "reconnect"))"
        since += t.resumes > 0 ? "; \(plural(t.resumes, "resume")) (\(bytes(t.resumedBytes)) not sent again)" : "; no resumes"
        out += since + "\n"
        if s.state == "starting" {
            out += "  pending: not known yet (the agent is starting)\n"
        } else if t.pendingSegments == 0 {
            out += "  pending: nothing\n"
        } else {
            out += "  pending: \(plural(t.pendingSegments, "segment")), \(bytes(t.pendingBytes)), oldest \(t.oldestPendingAgeSeconds.map(age) ?? "-")\n"
        }
        func followNote(_ f: AgentStatus.Follow) -> String { "\(plural(f.files, "file")) followed" }
        var rows = [["SPOOL", "KIND", "PENDING", "BYTES", "OLDEST", "SHIPPED", ""]]
        for sp in s.spools {
            rows.append([sp.name, sp.kind, "\(sp.pendingSegments)", bytes(sp.pendingBytes), sp.oldestPendingAgeSeconds.map(age) ?? "-",
                         "\(sp.shippedSegments) (\(bytes(sp.shippedBytes)))",
                         sp.rotatedToSeal > 0 ? "\(plural(sp.rotatedToSeal, "rotated file")) to seal" : sp.follow.map(followNote) ?? ""])
        }
        out += table(rows, indent: "    ")
        for sp in s.spools {
            guard let f = sp.follow, f.truncations + f.rewrites + f.lostBytes > 0 else { continue }
            out += "  FOLLOWED \(sp.name): \(plural(f.truncations, "truncation")) (copytruncate?), \(plural(f.rewrites, "rewrite")) in place; at least \(bytes(f.lostBytes)) not shipped (see the agent's log)\n"
        }
        if let e = errors(s.errors) { out += "  errors since start: \(e)\n" }
        let left = s.spools.reduce(0) { $0 + $1.unshippable }
        if left > 0 {
            out += "  LEFT BEHIND: \(plural(left, "file")) in the spools will not ship:\n"
            for l in s.leftBehind { out += "    \(l.spool)/\(l.name): \(LogText.escaped(l.reason))\n" }
            if left > s.leftBehind.count { out += "    ... and \(left - s.leftBehind.count) more\n" }
        }
        if t.pendingSegments > 0 && c.state != "connected" {
            out += "  STUCK: \(plural(t.pendingSegments, "segment")) (\(bytes(t.pendingBytes))) wait and the agent is not connected to \(s.collector)"
            out += c.lastError.map { "; last error: \(LogText.escaped($0))" } ?? ""
            out += "\n"
        } else if t.pendingSegments > 0 && t.shipRateBytesPerSecond == 0 && t.sendRateBytesPerSecond == 0 && (t.oldestPendingAgeSeconds ?? 0) > 60 {
            out += "  WAITING: connected, but nothing moved in the last 10 s while \(plural(t.pendingSegments, "segment")) wait, the oldest for \(age(t.oldestPendingAgeSeconds ?? 0))\n"
        }
        return out
    }

    static func collector(_ s: CollectorStatus) -> String {
        var out = "collector \(s.collectorId) (pid \(s.pid), up \(age(s.uptimeSeconds))): \(s.state), listening on \(s.listen)\n"
        let d = s.disk
        let free = d.freeBytes.map(bytes) ?? "unknown"
        out += "  data dir \(s.dataDir): \(free) free, \(bytes(d.reserveBytes)) kept in reserve\n"
        let t = s.totals
        out += "  flowing: \(rate(t.receiveRateBytesPerSecond)) received (last 10 s)\n"
        var since = "  since start: \(plural(t.committedSegments, "segment")), \(bytes(t.committedBytes)) committed; \(bytes(t.receivedBytes)) received"
        since += t.resumes > 0 ? "; \(plural(t.resumes, "resume")) (\(bytes(t.resumedBytes)) kept)" : "; no resumes"
        if let m = t.fsyncMeanSeconds { since += String(format: "; fdatasync %.1f ms mean over %llu", m * 1000, t.fsyncs) }
        out += since + "\n"
        out += "  agents connected: \(s.agents.count) (\(plural(s.connections, "connection")))\n"
        if !s.agents.isEmpty {
            var rows = [["AGENT", "ADDRESS", "PATH", "FOR", "IN", "COMMITTED", "OPEN", "PARTIALS"]]
            for a in s.agents {
                rows.append([a.agentId, a.address, a.path, age(a.connectedSeconds), bytes(a.bytesIn),
                             "\(a.segmentsCommitted) (\(bytes(a.bytesCommitted)))", "\(a.offersOpen)", "\(a.partials) (\(bytes(a.partialBytes)))"])
            }
            out += table(rows, indent: "    ")
        }
        out += "  partials held: \(plural(t.partials, "file")), \(bytes(t.partialBytes)) (all agents)\n"
        if let e = errors(s.errors) { out += "  errors since start: \(e)\n" }
        if let f = d.freeBytes, f <= d.reserveBytes {
            out += "  LOW SPACE: \(bytes(f)) free is within the \(bytes(d.reserveBytes)) reserve: offers are refused until space is freed\n"
        }
        return out
    }
}
