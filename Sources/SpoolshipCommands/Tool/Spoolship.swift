import ArgumentParser
import Foundation
import SpoolshipDaemon

struct Spoolship: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "spoolship",
        abstract: "The spoolship operator's tool.",
        subcommands: [Status.self, Verify.self, Demo.self])
}

