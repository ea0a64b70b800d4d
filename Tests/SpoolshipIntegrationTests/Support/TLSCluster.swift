import Foundation
import Glibc
import SpoolshipIO

/// Kernel TLS on this machine: the `tls` upper-layer protocol is loaded
/// (/proc/sys/net/ipv4/tcp_available_ulp), or `modprobe tls` loads it.
enum KernelTLS {
    static let available: Bool = {
        func listed() -> Bool {
            let ulp = (try? String(contentsOfFile: "/proc/sys/net/ipv4/tcp_available_ulp", encoding: .utf8)) ?? ""
            return ulp.split(whereSeparator: { $0 == " " || $0 == "\n" }).contains("tls")
        }
        if listed() { return true }
        _ = Process.run("modprobe", ["-q", "tls"])
        return listed()
    }()

    static let reason = "this kernel has no TLS (no \"tls\" in /proc/sys/net/ipv4/tcp_available_ulp, and `modprobe tls` does not load it)"
}

extension Cluster {
    var collectorLog: String { collector?.output ?? "" }

    /// The collector with TLS on: `leaf`'s certificate and key, trusting `ca`.
    @discardableResult
    func startTLSCollector(_ pki: TestPKI, leaf: String = "collector", ca: String = "ca", port fixed: UInt16? = nil, extra: [String] = [],
                           env: [String: String] = [:]) throws -> UInt16 {
        try startCollector(port: fixed, extra: pki.flags(leaf, ca: ca) + extra, env: env)
    }

    /// An agent's arguments with TLS on: `leaf`'s certificate and key, trusting `ca`.
    func tlsAgentArgs(_ pki: TestPKI, leaf: String = "agent", ca: String = "ca", id: String = "agent-1", state: String = "state",
                      spools: [(String, URL)], target: UInt16? = nil, extra: [String] = []) -> [String] {
        agentArgs(id: id, state: state, spools: spools, target: target, extra: pki.flags(leaf, ca: ca) + extra)
    }

    /// Every path under the data dir (relative, recursively, the private area included).
    func everythingInDataDir() -> Set<String> {
        var out: Set<String> = []
        if let e = FileManager.default.enumerator(atPath: dataDir.path) {
            while let f = e.nextObject() as? String { out.insert(f) }
        }
        return out
    }

    /// Waits until the collector's log has a line holding every one of `all` and, if `any` is
    /// not empty, one of `any`; returns that line.
    func waitForCollectorLine(_ all: [String], any: [String] = [], timeout: Double = 30) -> String? {
        var found: String?
        _ = Harness.waitUntil(timeout: timeout) {
            found = Self.line(in: collectorLog, all: all, any: any)
            return found != nil
        }
        return found
    }

    static func line(in log: String, all: [String], any: [String] = []) -> String? {
        log.split(separator: "\n").first { l in
            all.allSatisfy { l.contains($0) } && (any.isEmpty || any.contains { l.contains($0) })
        }.map(String.init)
    }
}

/// `openssl s_client` against a TLS collector: the certificate it presents.
enum SClient {
    /// Connects to 127.0.0.1:`port` trusting `ca.pem`, with the client certificate `leaf` (nil:
    /// none), and returns what s_client printed (stdin is /dev/null: it closes once the
    /// handshake is done). Bounded: 20 s.
    static func run(port: UInt16, pki: TestPKI, leaf: String?, log: URL, extra: [String] = []) throws -> String {
        var args = ["s_client", "-connect", "127.0.0.1:\(port)", "-CAfile", pki.path("ca.pem"), "-showcerts"]
        if let leaf { args += ["-cert", pki.path("\(leaf).pem"), "-key", pki.path("\(leaf).key")] }
        let d = try Daemon("/usr/bin/openssl", args + extra, log: log)
        guard d.wait(timeout: 20) != nil else {
            d.stop()
            throw TestFailure("openssl s_client did not finish: \(d.output)")
        }
        return d.output
    }

    /// The serial of the first certificate (the server's own) in s_client's -showcerts output.
    static func presentedSerial(port: UInt16, pki: TestPKI, log: URL) throws -> String {
        let out = try run(port: port, pki: pki, leaf: "agent", log: log)
        guard let begin = out.range(of: "-----BEGIN CERTIFICATE-----"),
              let end = out.range(of: "-----END CERTIFICATE-----", range: begin.upperBound..<out.endIndex) else {
            throw TestFailure("s_client showed no certificate:\n\(out)")
        }
        return try TestPKI.serial(ofPEM: String(out[begin.lowerBound..<end.upperBound]) + "\n", in: pki.dir)
    }
}

/// Writes `text` to `url` atomically (a temporary file renamed over it).
func replaceFile(_ url: URL, with data: Data) throws {
    let tmp = url.deletingLastPathComponent().appendingPathComponent(".\(url.lastPathComponent).new")
    try data.write(to: tmp)
    guard rename(tmp.path, url.path) == 0 else { throw Harness.Failure.errno("rename", tmp.path) }
}

/// A file of random bytes with `marker` written into it every 4 KiB: whoever sees the payload
/// in clear sees the marker, whole, in every TCP segment of a few KiB or more.
func writeMarkedFile(_ url: URL, size: Int, marker: String, seed: UInt64) throws {
    try Harness.writeRandomFile(url, size: size, seed: seed)
    let h = try FileHandle(forWritingTo: url)
    defer { try? h.close() }
    let m = Data(marker.utf8)
    var off = 0
    while off + m.count <= size {
        try h.seek(toOffset: UInt64(off))
        h.write(m)
        off += 4096
    }
}
