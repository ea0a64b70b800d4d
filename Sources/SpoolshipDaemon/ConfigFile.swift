import Foundation
import Glibc
import SpoolshipCore
import SpoolshipIO
import TOMLKit

/// A configuration error: names the file, and the line or key, and what was expected.
public struct ConfigError: Error, CustomStringConvertible {
    public var description: String
    public init(_ file: String, _ what: String) { description = "\(file): \(what)" }
}

/// Reads one TOML table strictly: every key must be known, every value of the expected type.
public struct TableReader {
    public let file: String
    public let table: TOMLTable
    /// Where the table is, for messages: "" for the top level, "[[logs]] #2".
    public let place: String
    private(set) var known: Set<String> = []

    public init(file: String, table: TOMLTable, place: String) {
        self.file = file
        self.table = table
        self.place = place
    }

    private func where_(_ key: String) -> String { place.isEmpty ? "key '\(key)'" : "key '\(key)' in \(place)" }

    public func fail(_ key: String, _ expected: String) -> ConfigError {
        ConfigError(file, "\(where_(key)): expected \(expected)")
    }

    public mutating func string(_ key: String) throws -> String? {
        known.insert(key)
        guard let v = table[key] else { return nil }
        guard let s = v.string else { throw fail(key, "a string, found \(v.type)") }
        return s
    }

    public mutating func bool(_ key: String) throws -> Bool? {
        known.insert(key)
        guard let v = table[key] else { return nil }
        guard let b = v.bool else { throw fail(key, "true or false, found \(v.type)") }
        return b
    }

    public mutating func seconds(_ key: String) throws -> Double? {
        known.insert(key)
        guard let v = table[key] else { return nil }
        let d = v.int.map(Double.init) ?? v.double
        guard let d = d, d > 0, d.isFinite else { throw fail(key, "a positive number of seconds") }
        return d
    }

    public mutating func int(_ key: String, in range: ClosedRange<Int>) throws -> Int? {
        known.insert(key)
        guard let v = table[key] else { return nil }
        guard let i = v.int, range.contains(i) else { throw fail(key, "an integer from \(range.lowerBound) to \(range.upperBound)") }
        return i
    }

    /// A size: an integer of bytes, or a string with a binary suffix ("512KiB", "64MiB", "1G").
    public mutating func bytes(_ key: String) throws -> UInt64? {
        known.insert(key)
        guard let v = table[key] else { return nil }
        if let i = v.int, i > 0 { return UInt64(i) }
        if let s = v.string, let b = ByteSize.parse(s) { return b }
        throw fail(key, "a positive size in bytes, as an integer or a string like \"64MiB\"")
    }

    public mutating func tables(_ key: String) throws -> [TOMLTable] {
        known.insert(key)
        guard let v = table[key] else { return [] }
        guard let a = v.array else { throw fail(key, "an array of tables ([[\(key)]])") }
        return try a.map { e in
            guard let t = e.table else { throw fail(key, "an array of tables ([[\(key)]])") }
            return t
        }
    }

    /// A table (`[key]`, or dotted keys `key.x = ...`), or nil when absent.
    public mutating func table(_ key: String) throws -> TOMLTable? {
        known.insert(key)
        guard let v = table[key] else { return nil }
        guard let t = v.table else { throw fail(key, "a table ([\(key)])") }
        return t
    }

    /// Refuses any key that was not asked for.
    public func rejectUnknown() throws {
        for k in table.keys where !known.contains(k) {
            throw ConfigError(file, "unknown \(where_(k)); known keys here: \(known.sorted().joined(separator: ", "))")
        }
    }
}

/// Reads and parses a TOML file; errors name the file, and the line and column of a syntax error.
public func parseTOML(path: String) throws -> TOMLTable {
    let text: String
    do {
        text = try String(contentsOfFile: path, encoding: .utf8)
    } catch {
        throw ConfigError(path, "cannot read the file: \(error.localizedDescription)")
    }
    do {
        return try TOMLTable(string: text)
    } catch let e as TOMLParseError {
        throw ConfigError(path, "line \(e.source.begin.line), column \(e.source.begin.column): \(e.description)")
    }
}

extension TableReader {
    /// `control-socket`: a socket path, or "none".
    public mutating func controlSocket() throws -> String? {
        let p = try string("control-socket")
        if let p = p, !ControlSocketPath.isValid(p) {
            throw fail("control-socket", "a socket path of 1 to 107 bytes, or \"none\"")
        }
        return p
    }

    /// `metrics-listen` (HOST:PORT) and `metrics-port-file`.
    public mutating func metrics() throws -> (String?, String?) {
        let l = try string("metrics-listen")
        if let l = l, Endpoint(l) == nil { throw fail("metrics-listen", "HOST:PORT, got '\(l)'") }
        return (l, try string("metrics-port-file"))
    }

    public mutating func logLevel() throws -> String? {
        let l = try string("log-level")
        if let l = l, !["trace", "debug", "info", "notice", "warning", "error", "critical"].contains(l) {
            throw fail("log-level", "one of trace, debug, info, notice, warning, error, critical; got '\(l)'")
        }
        return l
    }
}

/// The config file to read: the one given, else the default path when it exists.
public func configPath(given: String?, defaultPath: String) -> String? {
    if let g = given { return g }
    let exists = (try? Files.status(defaultPath)).flatMap { $0 } != nil
    return exists ? defaultPath : nil
}
