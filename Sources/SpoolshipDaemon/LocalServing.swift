import Foundation
import Glibc
import Logging
import SpoolshipIO

// What the control socket and the metrics listener share: an accept loop, and a request read
// within a deadline and a size bound, so that no client can hold a thread or memory.
extension Socket {
    /// Accepts clients and hands each to `handle`, on the calling thread, until `stopping`
    /// opens or the socket is shut down. A failed accept (EMFILE and friends) is logged, and
    /// the loop waits a moment for descriptors to come back.
    public func acceptClients(until stopping: Latch, logger: Logger, name: String, _ handle: (Socket) -> Void) {
        while !stopping.isOpen {
            let client: Socket
            do {
                switch try accept(timeout: 0.5) {
                case .accepted(let s): client = s
                case .timedOut: continue
                case .shutDown: return
                }
            } catch {
                if stopping.isOpen { return }
                logger.error("\(name): accept failed", metadata: ["error": "\(error)"])
                _ = stopping.wait(timeout: 0.1)
                continue
            }
            handle(client)
        }
    }

    public enum BoundedRead {
        /// What was wanted, up to the end that `until` found.
        case complete([UInt8])
        /// More than `max` bytes without an end.
        case tooLarge
        /// No end within the deadline.
        case timedOut
        /// The client closed, or the connection failed, after these bytes.
        case closed([UInt8])
    }

    /// Reads until `end` finds where the request ends (the index its bytes stop at), within
    /// `seconds`; at most `max` bytes are kept without an end, and at most `readLimit` read.
    public func receiveRequest(until end: ([UInt8]) -> Int?, max: Int, readLimit: Int, within seconds: Double, sendTimeout: Double) -> BoundedRead {
        let deadline = monotonicNow() + seconds
        var bytes: [UInt8] = []
        while true {
            if let e = end(bytes) { return .complete(Array(bytes[..<e])) }
            if bytes.count > max { return .tooLarge }
            let left = deadline - monotonicNow()
            if left <= 0 { return .timedOut }
            setTimeouts(receive: left, send: sendTimeout)
            let chunk: [UInt8]
            do { chunk = try receive(max: readLimit - bytes.count) } catch let e as SyscallError where e.errno == ETIMEDOUT {
                return .timedOut
            } catch {
                return .closed(bytes)
            }
            if chunk.isEmpty { return .closed(bytes) }
            bytes += chunk
        }
    }
}
