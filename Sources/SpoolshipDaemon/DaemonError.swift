import Foundation

/// A daemon's error for the operator: one sentence that says what went wrong.
public struct DaemonError: Error, CustomStringConvertible {
    public var description: String
    public init(_ d: String) { description = d }
}
