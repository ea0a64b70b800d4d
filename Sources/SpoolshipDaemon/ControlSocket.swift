import Foundation
import Glibc
import Logging
import SpoolshipIO

/// Where a daemon's control socket is, unless configured: `$RUNTIME_DIRECTORY` (which systemd
/// sets from RuntimeDirectory=), else /run/spoolship.
public enum ControlSocketPath {
    public static let defaultDirectory = "/run/spoolship"

    /// `name` is "agent" or "collector".
    public static func defaultPath(_ name: String, environment: [String: String] = ProcessInfo.processInfo.environment) -> String {
        // RUNTIME_DIRECTORY lists every directory of RuntimeDirectory=, separated by colons.
        if let dirs = environment["RUNTIME_DIRECTORY"], let first = dirs.split(separator: ":").first, !first.isEmpty {
            return "\(first)/\(name).sock"
        }
        return "\(defaultDirectory)/\(name).sock"
    }

    /// The value that turns the control socket off.
    public static let off = "none"

    /// Whether `p` may be given as the control socket: `none`, or a path that fits a socket
    /// address.
    public static func isValid(_ p: String) -> Bool {
        p == off || (!p.isEmpty && p.utf8.count <= Socket.maxUnixPath)
    }
}

/// The settings by which a daemon is observed, taken at start only: its control socket (nil
/// for the default path) and its metrics listener. Flags win over the config file's keys.
public struct ObservedSettings: Equatable, Sendable {
    public struct Metrics: Equatable, Sendable {
        public var listen: Endpoint
        public var portFile: String?
    }

    public var controlSocket: String?
    public var metrics: Metrics?

    /// A flag that cannot be taken, in one sentence.
    public struct Invalid: Error, CustomStringConvertible {
        public let description: String
    }

    /// The flags (`--control-socket`, `--metrics-listen`, `--metrics-port-file`) over the file's
    /// values (already checked when the file was read).
    public init(controlSocket flag: String?, metricsListen: String?, metricsPortFile: String?,
                file: (controlSocket: String?, metricsListen: String?, metricsPortFile: String?)) throws {
        if let p = flag, !ControlSocketPath.isValid(p) {
            throw Invalid(description: "--control-socket must be a path of 1 to \(Socket.maxUnixPath) bytes, or none; got '\(p)'")
        }
        controlSocket = flag ?? file.controlSocket
        guard let text = metricsListen ?? file.metricsListen else {
            if metricsPortFile != nil { throw Invalid(description: "--metrics-port-file needs --metrics-listen HOST:PORT") }
            return
        }
        guard let e = Endpoint(text) else { throw Invalid(description: "--metrics-listen must be HOST:PORT, got '\(text)'") }
        metrics = Metrics(listen: e, portFile: metricsPortFile ?? file.metricsPortFile)
    }
}

/// A daemon's control socket: an AF_UNIX stream socket, mode 0600, served on a thread of its
/// own. The exchange (docs/PROTOCOL.md, "Control socket"): the client sends one request line
/// (`status\n`), the daemon answers one JSON document and closes. A client gets 2 s to send its
/// line (at most 256 bytes) and 5 s to take the answer; one client is served at a time.
///
/// A lock file beside the socket (`PATH.lock`, flock) is held for the daemon's life: whoever
/// holds it owns the path, so a socket file left by a killed daemon is replaced at the next
/// start, and a second daemon given the same path is told so instead of stealing it.
public final class ControlServer: Sendable {
    public let path: String
    /// "agent" or "collector", for the error documents.
    public let daemon: String
    private let listener: Socket
    private let lock: OwnedFD
    private let logger: Logger
    private let respond: @Sendable (String) -> [UInt8]
    private let stopping = Latch()
    private let done = Latch()
    /// The socket file's identity, so that a stop removes only its own file.
    private let socketFile: PathStatus

    public static let maxRequest = 256
    public static let readDeadline = 2.0
    public static let writeDeadline = 5.0

    /// Binds the socket (making its directory, mode 0700, if missing). `respond` maps a
    /// request line (without its newline) to the answer's bytes; it runs on the control thread.
    public init(path: String, daemon: String, logger: Logger, respond: @escaping @Sendable (String) -> [UInt8]) throws {
        self.path = path
        self.daemon = daemon
        self.logger = logger
        self.respond = respond
        let dir = (path as NSString).deletingLastPathComponent
        if !dir.isEmpty {
            do { try Files.makeDirectories(dir, mode: 0o700) } catch {
                throw DaemonError("control socket \(path): cannot make its directory: \(error)")
            }
        }
        guard let l = try Files.lockExclusive(path + ".lock") else {
            throw DaemonError("control socket \(path) belongs to another running daemon (it holds \(path).lock); give this one its own --control-socket")
        }
        lock = l
        // What is at the path now; a failure to look counts as nothing there (the bind says more).
        let before = try? Files.linkStatus(path)
        if let b = before, !b.isSocket {
            throw DaemonError("control socket \(path): a file that is not a socket is in the way; remove it or choose another path")
        }
        if before?.isSocket == true, let live = try? Socket.connectUnix(path, timeout: 1) {
            // Nobody holds the lock, yet something listens there: not a socket of ours that
            // a killed daemon left (that one refuses connections), so not ours to replace.
            try? live.fd.close()
            throw DaemonError("control socket \(path): another program listens on that path; choose another path")
        }
        listener = try Socket.listenUnix(path, mode: 0o600)
        guard let bound = try Files.linkStatus(path) else { throw SyscallError(call: "lstat", path: path, errno: ENOENT) }
        socketFile = bound
        if !dir.isEmpty, let d = try? Files.status(dir), d.permissions & 0o077 != 0 {
            // The socket's own mode keeps others out (connect needs write permission on it).
            logger.notice("the control socket's directory is open to others; the socket itself is owner-only", metadata: [
                "path": "\(dir)", "mode": "\(String(d.permissions, radix: 8))"])
        }
    }

    /// Serves clients on a thread of its own until `stop()`.
    public func start() {
        startThread("control") { [self] in
            defer { done.open() }
            logger.info("control socket listening", metadata: ["path": "\(path)"])
            listener.acceptClients(until: stopping, logger: logger, name: "control socket") { serve($0) }
        }
    }

    /// One client: its request line within the deadline and size bound, then the answer.
    /// Whatever it sends or fails to read, the daemon goes on.
    private func serve(_ client: Socket) {
        // A close with unread bytes would reset the connection and lose the answer: stop
        // sending, and read what the client still sends (bounded) before closing.
        defer { client.lingeringClose(timeout: 1, maxBytes: 1 << 16) }
        let line: String
        switch readLine(client) {
        case .line(let l): line = l
        case .failure(let why):
            let doc = (try? StatusFormat.encoder().encode(StatusError(daemon: daemon, error: why))) ?? Data()
            client.setTimeouts(receive: 1, send: 1)
            try? client.sendAll(Array(doc) + [UInt8(ascii: "\n")])
            return
        case .gone: return
        }
        let answer = respond(line)
        client.setTimeouts(receive: Self.writeDeadline, send: Self.writeDeadline)
        do { try client.sendAll(answer) } catch {
            logger.debug("control socket: client did not take the answer", metadata: ["error": "\(error)"])
        }
    }

    private enum Request { case line(String), failure(String), gone }

    private func readLine(_ client: Socket) -> Request {
        let newline = UInt8(ascii: "\n")
        switch client.receiveRequest(until: { $0.firstIndex(of: newline) }, max: Self.maxRequest, readLimit: Self.maxRequest + 1,
                                     within: Self.readDeadline, sendTimeout: 1) {
        case .complete(let line): return Self.parse(line)
        case .tooLarge: return .failure("request line longer than \(Self.maxRequest) bytes")
        case .timedOut: return .failure("no request line within \(Int(Self.readDeadline)) s")
        // Closed: a request without its newline still counts.
        case .closed(let bytes): return bytes.isEmpty ? .gone : Self.parse(bytes)
        }
    }

    private static func parse(_ bytes: [UInt8]) -> Request {
        guard let s = String(bytes: bytes, encoding: .utf8) else { return .failure("request is not UTF-8") }
        return .line(s.trimmingCharacters(in: .whitespacesAndNewlines))
    }

    /// Stops serving and removes the socket file (when it is still this daemon's).
    public func stop() {
        stopping.open()
        listener.shutdown()
        done.wait(timeout: Self.writeDeadline + 1)
        if let now = try? Files.linkStatus(path), now.isSameFile(as: socketFile) {
            _ = try? Files.unlink(path: path)
        }
        try? listener.fd.close()
    }

    /// The answer to a request line: `status` gives the document `status()` makes; anything
    /// else an error document naming what is understood.
    public static func answer(_ line: String, daemon: String, status: () -> Data) -> [UInt8] {
        let words = line.split(separator: " ")
        if words.first == "status" && words.count <= 2 && (words.count == 1 || words[1] == "v\(StatusFormat.version)") {
            return Array(status()) + [UInt8(ascii: "\n")]
        }
        let shown = line.count > 40 ? String(line.prefix(40)) + "..." : line
        let e = StatusError(daemon: daemon, error: "unknown request '\(shown)'; this daemon answers: status")
        return Array((try? StatusFormat.encoder().encode(e)) ?? Data()) + [UInt8(ascii: "\n")]
    }

    /// Starts the control socket at `path`, or none for `ControlSocketPath.off`. A path that
    /// was configured must work (the error stops the start); the default one is optional: a
    /// failure is logged and the daemon runs without it.
    public static func startIfConfigured(path configured: String?, defaultName: String, logger: Logger,
                                         respond: @escaping @Sendable (String) -> [UInt8]) throws -> ControlServer? {
        let path = configured ?? ControlSocketPath.defaultPath(defaultName)
        if path == ControlSocketPath.off { return nil }
        do {
            let s = try ControlServer(path: path, daemon: defaultName, logger: logger, respond: respond)
            s.start()
            return s
        } catch {
            if configured != nil { throw error }
            logger.warning("no control socket at the default path; spoolship status cannot reach this daemon (give --control-socket PATH)", metadata: [
                "path": "\(path)", "error": "\(error)"])
            return nil
        }
    }
}

/// The settings a daemon takes at start only (the control socket, the metrics listener), to
/// tell at a reload which of them changed and wait for a restart.
public struct FixedAtStart: Sendable {
    public let atStart: ObservedSettings

    public init(_ atStart: ObservedSettings) { self.atStart = atStart }

    /// The keys whose new value differs from the one in use.
    public func changed(_ next: ObservedSettings) -> [String] {
        var out: [String] = []
        if next.controlSocket != atStart.controlSocket { out.append("control-socket") }
        if next.metrics != atStart.metrics { out.append("metrics-listen") }
        return out
    }
}
