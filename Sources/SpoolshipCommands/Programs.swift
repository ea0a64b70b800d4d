import ArgumentParser

/// The three programs of spoolship live in this one library; each executable is one line that
/// calls its entry here. The package installs one binary, /usr/bin/spoolship, with
/// spoolship-agent and spoolship-collector as symlinks to it (one copy of the statically
/// linked Swift runtime and Foundation instead of three: docs/OPERATIONS.md, "Installing").
public enum SpoolshipMain {
    public static func agent() { AgentCommand.main() }
    public static func collector() { CollectorCommand.main() }
    public static func tool() { Spoolship.main() }

    /// Runs the program that the last component of argv[0] names: `spoolship-agent`,
    /// `spoolship-collector`, else the operator's tool. systemd, shells and the demo all start
    /// a program with its path as argv[0], so the symlinks choose.
    public static func byName() {
        switch programName(CommandLine.arguments.first ?? "") {
        case "spoolship-agent": agent()
        case "spoolship-collector": collector()
        default: tool()
        }
    }

    static func programName(_ argv0: String) -> String {
        argv0.split(separator: "/", omittingEmptySubsequences: false).last.map(String.init) ?? ""
    }
}
