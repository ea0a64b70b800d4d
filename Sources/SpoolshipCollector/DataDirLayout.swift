/// The collector's data dir, as names: the one place its layout is spelled. The collector
/// (`DataDir`, `AgentStore`), its status report and `spoolship verify` all ask this type.
///
///     <data-dir>/<agent-id>/<spool>/<name>              committed segments (complete, verified, durable)
///     <data-dir>/.spoolship/lock                        held by the running collector (flock)
///     <data-dir>/.spoolship/partial/<agent-id>/<key>.part  partial data, one file per segment key
///     <data-dir>/.spoolship/ledger/<agent-id>.ledger    every committed segment, append-only
///
/// Agent ids and spool names cannot start with '.', so the private area never collides with
/// an agent's directory. The paths here are for opening the data dir, for labels and for
/// messages; below the data dir everything is opened by name beneath its parent's descriptor.
struct DataDirLayout: Sendable {
    /// The data dir as given.
    let path: String

    /// The private area's name in the data dir, and the names in it.
    static let area = ".spoolship"
    static let lockName = "lock"
    static let partialName = "partial"
    static let ledgerName = "ledger"
    static let ledgerSuffix = ".ledger"
    /// What every partial file's name ends with (`SegmentKey.partialFileName`).
    static let partialSuffix = ".part"

    var areaPath: String { "\(path)/\(Self.area)" }
    var lockPath: String { "\(areaPath)/\(Self.lockName)" }
    var partialRootPath: String { "\(areaPath)/\(Self.partialName)" }
    var ledgerRootPath: String { "\(areaPath)/\(Self.ledgerName)" }
    /// The ledger directory relative to the data dir, for messages.
    static var ledgerRelativePath: String { "\(area)/\(ledgerName)" }

    /// One agent's partial directory.
    func partialPath(agent: String) -> String { "\(partialRootPath)/\(agent)" }
    func partialFilePath(agent: String, name: String) -> String { "\(partialPath(agent: agent))/\(name)" }

    /// One agent's ledger, by name in the ledger directory and by path.
    static func ledgerFileName(agent: String) -> String { "\(agent)\(ledgerSuffix)" }
    func ledgerPath(agent: String) -> String { "\(ledgerRootPath)/\(Self.ledgerFileName(agent: agent))" }
    /// The agent whose ledger a file in the ledger directory is, or nil if it is none.
    static func agent(ofLedgerFile name: String) -> String? {
        name.hasSuffix(ledgerSuffix) ? String(name.dropLast(ledgerSuffix.count)) : nil
    }

    static func isPartialFile(_ name: String) -> Bool { name.hasSuffix(partialSuffix) }
    /// Whether a name in the data dir is an agent's directory (not the private area).
    static func isAgentDirectory(_ name: String) -> Bool { !name.hasPrefix(".") }

    /// Committed segments: an agent's directory, a spool's, a segment's. `relative` is the
    /// segment's path below the data dir, as verify reports it.
    func agentPath(_ agent: String) -> String { "\(path)/\(agent)" }
    func spoolPath(agent: String, spool: String) -> String { "\(agentPath(agent))/\(spool)" }
    static func relative(agent: String, spool: String, name: String) -> String { "\(agent)/\(spool)/\(name)" }
    func segmentPath(agent: String, spool: String, name: String) -> String { "\(path)/\(Self.relative(agent: agent, spool: spool, name: name))" }
}
