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
///
/// A small segment's partial may have no name at all (`unnamed`): an O_TMPFILE in the partial
/// directory, which the commit links into place under the segment's name. It costs no entry
/// in the partial directory and no rename, and cannot be resumed: a cut connection, a crash or
/// a poisoned sync leaves nothing behind, and the agent sends the segment again whole.
final class PartialFile: Sendable {
    /// The file's name in the agent's partial directory (what a named file is called, and what
    /// an offer of the same segment looks for), and its path for messages.
    let name: String
    let label: String
    /// Asked for an unnamed file (where the file system makes one; see `isUnnamed`).
    private let preferUnnamed: Bool

    private enum State {
        /// No byte yet: the first DATA creates the file.
        case unopened
        /// Open. `entrySynced`: its directory entry is known durable (a resumed file's was
        /// synced at the offer; a new file's at its first checkpoint). `unnamed`: an O_TMPFILE.
        case open(OwnedFD, entrySynced: Bool, unnamed: Bool)
        case closed(unnamed: Bool)
    }
    private let state: Mutex<State>

    /// A partial with no file yet; `unnamed`: made as an O_TMPFILE where the file system can.
    init(name: String, label: String, unnamed: Bool = false) {
        self.name = name
        self.label = label
        preferUnnamed = unnamed
        state = Mutex(.unopened)
    }

    /// A partial file found at an offer and opened to resume it (its entry already durable).
    init(resuming fd: OwnedFD, name: String, label: String) {
        self.name = name
        self.label = label
        preferUnnamed = false
        state = Mutex(.open(fd, entrySynced: true, unnamed: false))
    }

    /// Creates the file in `dir` if no byte has been written yet: unnamed if asked for and
    /// the file system can, else under `name` (truncating).
    func openIfNeeded(in dir: OwnedFD) throws {
        let unopened = state.withLock { if case .unopened = $0 { return true }; return false }
        guard unopened else { return }
        if preferUnnamed, let fd = try Files.openUnnamed(in: dir, label: label) {
            state.withLock { $0 = .open(fd, entrySynced: true, unnamed: true) }
            return
        }
        let fd = try Files.openBeneath(dir, name, O_RDWR | O_CREAT | O_TRUNC, mode: 0o644, label: label)
        state.withLock { $0 = .open(fd, entrySynced: false, unnamed: false) }
    }

    /// The descriptor, to write, read and sync through; nil before the first byte and after
    /// `close()`.
    var descriptor: OwnedFD? {
        state.withLock { if case .open(let fd, _, _) = $0 { return fd }; return nil }
    }

    /// Whether the file was opened and is not closed yet.
    var isOpen: Bool { descriptor != nil }

    /// Whether the file has no name: nothing of it is on disk to resume, leave or remove.
    var isUnnamed: Bool {
        state.withLock {
            switch $0 {
            case .unopened: return false
            case .open(_, _, let unnamed), .closed(let unnamed): return unnamed
            }
        }
    }

    /// Whether the directory entry of the open file is known durable (an unnamed file has
    /// none to sync).
    var entrySynced: Bool {
        state.withLock { if case .open(_, let synced, _) = $0 { return synced }; return false }
    }

    /// After an fsync of the partial directory.
    func markEntrySynced() {
        state.withLock { if case .open(let fd, _, let unnamed) = $0 { $0 = .open(fd, entrySynced: true, unnamed: unnamed) } }
    }

    /// Closes the descriptor, once; throws the error of close(2) (R2: it poisons the file).
    /// An unnamed file is gone with it.
    func close() throws {
        let fd: OwnedFD? = state.withLock { s in
            guard case .open(let fd, _, let unnamed) = s else { return nil }
            s = .closed(unnamed: unnamed)
            return fd
        }
        try fd?.close()
    }
}
