import ArgumentParser
import SpoolshipDaemon

/// Which daemon a `DaemonOptions` group belongs to: the help of the flags whose default
/// differs between the two (the config file, the control socket).
protocol DaemonKind {
    static var configHelp: String { get }
    static var controlSocketHelp: String { get }
}

enum AgentKind: DaemonKind {
    static let configHelp = "A TOML config file (default /etc/spoolship/agent.toml when it exists); flags override it."
    static let controlSocketHelp = "The control socket that spoolship status asks (default $RUNTIME_DIRECTORY/agent.sock, else /run/spoolship/agent.sock; none: no socket)."
}

enum CollectorKind: DaemonKind {
    static let configHelp = "A TOML config file (default /etc/spoolship/collector.toml when it exists); flags override it."
    static let controlSocketHelp = "The control socket that spoolship status asks (default $RUNTIME_DIRECTORY/collector.sock, else /run/spoolship/collector.sock; none: no socket)."
}

/// The flags both daemons take, declared once (`@OptionGroup` in `AgentCommand` and
/// `CollectorCommand`); `flags` hands them to the daemon's settings type.
struct DaemonOptions<Kind: DaemonKind>: ParsableArguments {
    @Option(help: ArgumentHelp(Kind.configHelp))
    var config: String?

    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical (default info).")
    var logLevel: String?

    @Option(help: ArgumentHelp(Kind.controlSocketHelp, valueName: "path"))
    var controlSocket: String?

    @Option(help: ArgumentHelp("Serve Prometheus metrics at /metrics and a health check at /healthz over HTTP on HOST:PORT (port 0: any free port).", valueName: "host:port"))
    var metricsListen: String?

    @Option(help: ArgumentHelp("Write the metrics listener's bound port to this file (for scripts and tests).", valueName: "file"))
    var metricsPortFile: String?

    @Option(help: ArgumentHelp("TLS: the CA certificates (PEM) that sign the peer's certificate. TLS is on when the CA, certificate and key files are given, all three.", valueName: "file"))
    var tlsCaFile: String?

    @Option(help: ArgumentHelp("TLS: this side's certificate (PEM, chain after it).", valueName: "file"))
    var tlsCertFile: String?

    @Option(help: ArgumentHelp("TLS: this side's private key (PEM).", valueName: "file"))
    var tlsKeyFile: String?

    @Option(help: ArgumentHelp("TLS: the lowest version accepted, 1.2 or 1.3 (default 1.2).", valueName: "version"))
    var tlsMinVersion: String?

    @Option(help: ArgumentHelp("Kernel TLS: auto (where the kernel has it), off, or require (refuse to start without it). Default auto.", valueName: "mode"))
    var ktls: String?

    var flags: DaemonFlags {
        var f = DaemonFlags(config: config, logLevel: logLevel, controlSocket: controlSocket,
                            metricsListen: metricsListen, metricsPortFile: metricsPortFile)
        f.tlsCAFile = tlsCaFile
        f.tlsCertFile = tlsCertFile
        f.tlsKeyFile = tlsKeyFile
        f.tlsMinVersion = tlsMinVersion
        f.kernelTLS = ktls
        return f
    }
}

/// Settings that cannot be resolved are a usage error, as a bad flag is: `Error: `, the
/// sentence, the usage, exit status 64.
func usageErrors<T>(_ body: () throws -> T) throws -> T {
    do { return try body() } catch let e as SettingsError { throw ValidationError(e.description) }
}
