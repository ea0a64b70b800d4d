import Foundation
import Glibc

/// One file system's syncs, shared by every thread that needs its recent writes durable: a
/// caller gets the result of a `Files.syncFileSystem` that began after it asked, and callers
/// that ask while one runs share the next one. Each connection's commit batch would otherwise
/// pay a syncfs of its own, and syncfs writes back the whole file system each time.
///
/// A failed sync's error goes to every caller that it served, and to no later one: syncfs
/// reports an error once per descriptor, so the sync after it may well succeed without the
/// data of the failed one being on disk (R2: the caller must not trust its files).
///
/// `@unchecked Sendable`: every `var` is read and written only with `cond` held; `fd` is
/// used by one sync at a time.
public final class GroupSync: @unchecked Sendable {
    private let fd: OwnedFD
    private let cond = NSCondition()
    // Under `cond`:
    /// The number of the last sync begun, and of the last ended.
    private var begun: UInt64 = 0
    private var ended: UInt64 = 0
    private var running = false
    /// The errors of recent failed syncs, by number (successes are not kept).
    private var failures: [UInt64: SyscallError] = [:]

    /// `fd`: a descriptor on the file system, opened before the writes it is to cover (syncfs
    /// reports the errors seen since its descriptor was opened).
    public init(fd: OwnedFD) {
        self.fd = fd
    }

    /// Syncs the file system: returns nil once a sync that began after this call has
    /// succeeded, or that sync's error. `timed` gets the seconds of a sync this call ran itself.
    public func sync(timed: ((Double) -> Void)? = nil) -> SyscallError? {
        cond.lock()
        defer { cond.unlock() }
        // A sync running now may have passed some of this caller's writes: the next one counts.
        let mine = begun + 1
        while ended < mine {
            if running {
                cond.wait()
                continue
            }
            running = true
            begun += 1
            let number = begun
            cond.unlock()
            let started = monotonicSeconds()
            var failed: SyscallError?
            do { try Files.syncFileSystem(fd) } catch let e as SyscallError { failed = e } catch {
                failed = SyscallError(call: "syncfs", path: fd.label, errno: EIO)
            }
            timed?(monotonicSeconds() - started)
            cond.lock()
            running = false
            ended = number
            if let e = failed {
                failures[number] = e
                // Callers of a failed sync have long collected its error by the time 64 more
                // have run; the map stays small.
                failures = failures.filter { $0.key + 64 > number }
            }
            cond.broadcast()
        }
        return failures[mine]
    }
}
