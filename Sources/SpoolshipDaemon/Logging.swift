import Foundation
import Logging

public enum SpoolshipLogging {
    /// Logs go to stderr as readable lines (the journal backend comes with the systemd work).
    public static func bootstrap(level: Logger.Level) {
        LoggingSystem.bootstrap { label in
            var h = StreamLogHandler.standardError(label: label)
            h.logLevel = level
            return h
        }
    }
}

extension Logger.Level {
    public static func parse(_ s: String) -> Logger.Level? { Logger.Level(rawValue: s.lowercased()) }
}
