import Foundation
import Glibc
import SpoolshipCore
import SpoolshipIO
import SpoolshipDaemon
import TOMLKit

/// What a collector's config file says. Every field is optional: flags fill in or override.
public struct CollectorFileConfig {
    public var listen: String?
    public var dataDir: String?
    public var portFile: String?
    public var maxSegmentSize: UInt64?
    public var handshakeTimeout: Double?
    public var idleTimeout: Double?
    public var checkpointBytes: UInt64?
    public var partialMaxAge: Double?
    public var logLevel: String?
    public var agents: String?
    public var maxConnections: Int?
    public var freeSpaceReserve: UInt64?
    public var maxPartialBytes: UInt64?
    public var maxFrameBody: UInt64?
    public var commitSync: String?
    public var controlSocket: String?
    public var metricsListen: String?
    public var metricsPortFile: String?
    /// The `[tls]` table.
    public var tls = TLSKeys()

    public init() {}

    public static let defaultPath = "/etc/spoolship/collector.toml"

    public static func load(path: String) throws -> CollectorFileConfig {
        var top = TableReader(file: path, table: try parseTOML(path: path), place: "")
        var c = CollectorFileConfig()
        c.listen = try top.string("listen")
        if let l = c.listen, Endpoint(l) == nil { throw top.fail("listen", "HOST:PORT, got '\(l)'") }
        c.dataDir = try top.string("data-dir")
        c.portFile = try top.string("port-file")
        c.maxSegmentSize = try top.bytes("max-segment-size")
        c.handshakeTimeout = try top.seconds("handshake-timeout")
        c.idleTimeout = try top.seconds("idle-timeout")
        c.checkpointBytes = try top.bytes("checkpoint-bytes")
        c.partialMaxAge = try top.seconds("partial-max-age")
        c.logLevel = try top.logLevel()
        c.agents = try top.string("agents")
        c.maxConnections = try top.int("max-connections", in: 1...1_000_000)
        c.freeSpaceReserve = try top.bytes("free-space-reserve")
        c.maxPartialBytes = try top.bytes("max-partial-bytes")
        c.maxFrameBody = try top.bytes("max-frame-body")
        c.commitSync = try top.string("commit-sync")
        if let m = c.commitSync, CommitSync(rawValue: m) == nil { throw top.fail("commit-sync", "\"filesystem\" or \"file\", got '\(m)'") }
        c.controlSocket = try top.controlSocket()
        (c.metricsListen, c.metricsPortFile) = try top.metrics()
        c.tls = try top.tls(serverName: false)
        try top.rejectUnknown()
        return c
    }
}
