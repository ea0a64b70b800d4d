import Foundation
import Glibc

/// Runs many fdatasync calls at once on a fixed set of threads.
///
/// On ext4 (and XFS) each fdatasync of a newly written file waits for a journal commit;
/// concurrent callers share one commit (jbd2 batches the transactions of whoever is waiting).
/// Syncing a batch of small segments in parallel therefore costs about one disk flush instead
/// of one per file, while every file keeps its own fdatasync and its own error (R2: an error
/// poisons that file only). The collector's default for batches of several files is one
/// syncfs(2) instead (`GroupSync`), and this pool when that fails, to find which files it
/// concerns.
///
/// `@unchecked Sendable`: every `var` below is read and written only with `cond` held (the
/// caller waits on it for the batch, the workers for work, which a `Mutex` cannot do), and
/// `busy` lets one batch at a time use them.
public final class SyncPool: @unchecked Sendable {
    private let cond = NSCondition()
    // Under `cond`:
    private var queue: [(OwnedFD, Int)] = []
    private var results: [SyscallError?] = []
    private var remaining = 0
    /// The running batch's timer, called on the worker threads.
    private var timed: (@Sendable (Double) -> Void)?
    private let busy = NSLock()

    public init(threads: Int) {
        for i in 0..<max(1, threads) {
            let t = Thread { [unowned self] in self.work() }
            t.name = "fdatasync-\(i)"
            t.stackSize = 256 << 10
            t.start()
        }
    }

    /// A process-wide pool (threads are cheap while they wait).
    public static let shared = SyncPool(threads: 32)

    /// fdatasyncs every descriptor, in parallel; returns each one's error, or nil. `timed` gets
    /// each call's seconds (on the thread that made it).
    public func fdatasyncAll(_ fds: [OwnedFD], timed: (@Sendable (Double) -> Void)? = nil) -> [SyscallError?] {
        if fds.count == 1 {
            let started = monotonicSeconds()
            defer { timed?(monotonicSeconds() - started) }
            do { try Files.fdatasync(fds[0]); return [nil] } catch let e as SyscallError { return [e] } catch {
                // Not a failed call (Files.fdatasync throws nothing else): never taken for a
                // success (R2).
                return [SyscallError(call: "fdatasync", path: fds[0].label, errno: EIO)]
            }
        }
        busy.lock()  // one batch at a time: results belong to it
        defer { busy.unlock() }
        cond.lock()
        self.timed = timed
        results = Array(repeating: nil, count: fds.count)
        remaining = fds.count
        queue = fds.enumerated().map { ($0.element, $0.offset) }
        cond.broadcast()
        while remaining > 0 { cond.wait() }
        let out = results
        self.timed = nil
        cond.unlock()
        return out
    }

    private func work() {
        while true {
            cond.lock()
            while queue.isEmpty { cond.wait() }
            let (fd, index) = queue.removeLast()
            let timer = timed
            cond.unlock()
            var err: SyscallError?
            let started = monotonicSeconds()
            do { try Files.fdatasync(fd) } catch let e as SyscallError { err = e } catch { err = SyscallError(call: "fdatasync", path: fd.label, errno: EIO) }
            timer?(monotonicSeconds() - started)
            cond.lock()
            results[index] = err
            remaining -= 1
            if remaining == 0 { cond.broadcast() }
            cond.unlock()
        }
    }
}
