import Foundation
import Glibc
import SpoolshipIO

/// What `spoolship status` gets from a daemon's control socket: one JSON document (keys in
/// snake_case, docs/PROTOCOL.md "Control socket"). `version` changes only when a field changes
/// meaning or goes away; new fields may appear in any version.
public enum StatusFormat {
    public static let version = 1

    public static func encoder() -> JSONEncoder {
        let e = JSONEncoder()
        e.keyEncodingStrategy = .convertToSnakeCase
        e.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return e
    }

    public static func decoder() -> JSONDecoder {
        let d = JSONDecoder()
        d.keyDecodingStrategy = .convertFromSnakeCase
        return d
    }

    /// Seconds rounded to the millisecond (so the JSON does not carry float noise).
    public static func seconds(_ s: Double) -> Double { (max(0, s) * 1000).rounded() / 1000 }
}

/// The first fields of every answer: enough to know which daemon answered, and how to read the rest.
public struct StatusHeader: Codable, Sendable {
    public var version: Int
    public var daemon: String
    public var error: String?
}

/// An answer that is an error (an unknown request).
public struct StatusError: Codable, Sendable {
    public var version = StatusFormat.version
    public var daemon: String
    public var error: String
}
