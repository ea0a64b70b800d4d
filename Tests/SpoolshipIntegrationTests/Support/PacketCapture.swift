import Foundation
import Glibc

/// A loopback capture with tcpdump (Debian's tcpdump, installed by scripts/setup.sh; the tests
/// run as root): `tcpdump -i lo -U -w FILE 'tcp port P'`, started and waited for until it says
/// it is listening, stopped with SIGTERM and waited for (SIGTERM, not SIGINT: a program
/// started in the background of a non-interactive shell, as a CI step may be, has SIGINT
/// ignored, and its children inherit that; tcpdump flushes and closes its file on either). `stop()` returns the pcap file's bytes
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
        daemon = try Daemon(Self.tcpdump, ["-i", "lo", "-n", "-s", "0", "-U", "-w", file.path, "tcp port \(port)"], log: dir.appendingPathComponent("\(name)-\(port).log"))
        // tcpdump says so on stderr once the capture is open and the filter set.
        guard Harness.waitUntil(timeout: 30, { daemon.output.contains("listening on lo") || !daemon.isRunning }), daemon.isRunning else {
            daemon.stop()
            throw TestFailure("tcpdump did not start capturing: \(daemon.output)")
        }
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
