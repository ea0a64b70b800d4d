import Foundation
import Glibc

/// A loopback capture with tcpdump (Debian's tcpdump, installed by scripts/setup.sh; the tests
/// run as root): `tcpdump -i lo -U --immediate-mode -B 65536 -w FILE 'tcp port P'` (each packet
/// written as it comes, none left in a batch at the stop; a 64 MiB ring so that none is
/// dropped), started and waited for until it says
/// it is listening, stopped with SIGTERM and waited for (SIGTERM, not SIGINT: a program
/// started in the background of a non-interactive shell, as a CI step may be, has SIGINT
/// ignored, and its children inherit that; tcpdump flushes and closes its file on either).
/// It starts with no signal blocked (`Daemon(signalsUnblocked:)`). `stop()` returns the pcap file's bytes
/// (headers and whole packets: -s 0), to search for what crossed the wire in clear.
final class PacketCapture {
    let file: URL
    let port: UInt16
    private let daemon: Daemon

    static let tcpdump = "/usr/bin/tcpdump"
    static var available: Bool { FileManager.default.isExecutableFile(atPath: tcpdump) }

    init(port: UInt16, in dir: URL, name: String = "capture") throws {
        guard Self.available else {
            throw TestFailure("\(Self.tcpdump) is missing: scripts/setup.sh installs Debian's tcpdump (apt-get install tcpdump)")
        }
        self.port = port
        file = dir.appendingPathComponent("\(name)-\(port).pcap")
        daemon = try Daemon(signalsUnblocked: [Self.tcpdump, "-i", "lo", "-n", "-s", "0", "-U", "--immediate-mode", "-B", "65536", "-w", file.path, "tcp port \(port)"],
                            log: dir.appendingPathComponent("\(name)-\(port).log"))
        // tcpdump says so on stderr once the capture is open and the filter set.
        guard Harness.waitUntil(timeout: 30, { daemon.output.contains("listening on lo") || !daemon.isRunning }), daemon.isRunning else {
            daemon.stop()
            throw TestFailure("tcpdump did not start capturing: \(daemon.output)")
        }
    }

    /// Waits until the capture file holds at least `bytes` bytes (what tcpdump has taken from
    /// the kernel is written at once); whether it did.
    @discardableResult
    func waitForFile(atLeast bytes: Int, timeout: Double = 15) -> Bool {
        Harness.waitUntil(timeout: timeout) {
            ((try? FileManager.default.attributesOfItem(atPath: file.path)[.size] as? Int) ?? 0) >= bytes
        }
    }

    /// Packets the kernel dropped, as tcpdump said when it stopped (nil before, or if it did not say).
    var droppedByKernel: Int? {
        guard let line = output.split(separator: "\n").first(where: { $0.hasSuffix("packets dropped by kernel") }) else { return nil }
        return Int(line.split(separator: " ").first ?? "")
    }

    /// Stops the capture (tcpdump flushes and closes the file) and returns its bytes.
    func stop() throws -> Data {
        daemon.kill(SIGTERM)
        guard daemon.wait(timeout: 30) != nil else {
            daemon.stop()
            throw TestFailure("tcpdump did not stop on SIGTERM: \(daemon.output)")
        }
        return try Data(contentsOf: file)
    }

    /// What tcpdump said (the packet counts once stopped).
    var output: String { daemon.output }

    deinit { daemon.stop() }
}

extension Daemon {
    /// Starts `argv` with an empty signal mask. A child started from the test runner inherits
    /// the mask of the thread that launched it, and there nearly every signal is blocked
    /// (SIGTERM and SIGINT among them): the daemons under test unblock what they handle, but
    /// tcpdump and strace would never see the SIGTERM that stops them. Debian's python3
    /// (scripts/setup.sh) clears the mask and execs the program.
    convenience init(signalsUnblocked argv: [String], log: URL) throws {
        let script = "import os, signal, sys; signal.pthread_sigmask(signal.SIG_SETMASK, []); os.execv(sys.argv[1], sys.argv[1:])"
        try self.init("/usr/bin/python3", ["-c", script] + argv, log: log)
    }
}
