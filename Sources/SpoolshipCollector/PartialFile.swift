import Glibc
import SpoolshipCore
import SpoolshipIO
import Synchronization

/// R3: one descriptor stays open from a partial file's first byte to its final sync. This is
/// that descriptor's only owner: it opens it (the first DATA creates the file, or an offer
/// resumes one), lends it for splicing and syncing, and closes it exactly once, in `close()`
/// (a later call does nothing; a partial never closed, as one whose offer was replaced, closes
/// when its last reference goes).
///
/// Who closes: the durability thread after the final sync of a commit, or the reader thread
/// after the durability thread has finished (the connection's end), or the reader when it turns
/// an offer down before any transfer has the file. The borrowed descriptor is never used after
/// that: the commit's reader has dropped its transfer, and the connection's end waits for the
/// durability thread.
final class PartialFile: Sendable {
    /// The file's name in the agent's partial directory, and its path for messages.
    let name: String
    let label: String

    private enum State {
        /// No byte yet: the first DATA creates the file.
        case unopened
        /// Open. `entrySynced`: its directory entry is known durable (a resumed file's was
        /// synced at the offer; a new file's at its first checkpoint).
        case open(OwnedFD, entrySynced: Bool)
        case closed
    }
    private let state: Mutex<State>

    /// A partial with no file yet.
    init(name: String, label: String) {
        self.name = name
        self.label = label
        state = Mutex(.unopened)
    }

    /// A partial file found at an offer and opened to resume it (its entry already durable).
    init(resuming fd: OwnedFD, name: String, label: String) {
        self.name = name
        self.label = label
        state = Mutex(.open(fd, entrySynced: true))
    }

    /// Creates (truncating) and opens the file in `dir` if no byte has been written yet.
    func openIfNeeded(in dir: OwnedFD) throws {
        let unopened = state.withLock { if case .unopened = $0 { return true }; return false }
        guard unopened else { return }
        let fd = try Files.openBeneath(dir, name, O_RDWR | O_CREAT | O_TRUNC, mode: 0o644, label: label)
        state.withLock { $0 = .open(fd, entrySynced: false) }
    }

    /// The descriptor, to write, read and sync through; nil before the first byte and after
    /// `close()`.
    var descriptor: OwnedFD? {
        state.withLock { if case .open(let fd, _) = $0 { return fd }; return nil }
    }

    /// Whether the file was opened and is not closed yet.
    var isOpen: Bool { descriptor != nil }

    /// Whether the directory entry of the open file is known durable.
    var entrySynced: Bool {
        state.withLock { if case .open(_, let synced) = $0 { return synced }; return false }
    }

    /// After an fsync of the partial directory.
    func markEntrySynced() {
        state.withLock { if case .open(let fd, _) = $0 { $0 = .open(fd, entrySynced: true) } }
    }

    /// Closes the descriptor, once; throws the error of close(2) (R2: it poisons the file).
    func close() throws {
        let fd: OwnedFD? = state.withLock { s in
            guard case .open(let fd, _) = s else { return nil }
            s = .closed
            return fd
        }
        try fd?.close()
    }
}
