import Foundation
import Glibc
import SpoolshipIO

/// Certificates made by the `openssl` command (/usr/bin/openssl, OpenSSL 3.0) for a test, in a
/// directory of their own (`NAME.pem`, `NAME.key`):
/// - `ca`, and an unrelated `other-ca`;
/// - `collector`: SAN IP:127.0.0.1, DNS:collector.test;
/// - `agent`: SAN DNS:agent-1, URI:spoolship://agent/agent-1 (the agent id `agent-1`);
/// - `stranger`: SAN DNS:agent-1, from `other-ca`;
/// - `agent-expired`: SAN DNS:agent-1, valid only in January 2020 (made with `openssl ca`,
///   since OpenSSL 3.0's `openssl x509` cannot set the dates);
/// - `agent-2`: SAN DNS:agent-2 only (not the id `agent-1`);
/// - `agent-cn-only`: CN agent-1 and no subjectAltName at all;
/// - `collector-elsewhere`: SAN DNS:elsewhere.test only (neither 127.0.0.1 nor collector.test).
/// Every leaf's CN is `NAME-cn-is-never-used` unless said otherwise. More leaves, from the
/// same CA, with `leaf(_:ca:san:)` (each gets a serial of its own).
struct TestPKI {
    let dir: URL

    /// In a new temporary directory (remove it with `Harness.remove(pki.dir)`).
    init(_ prefix: String) throws {
        try self.init(dir: Harness.tempDir(prefix))
    }

    /// In `dir` (made if missing), e.g. inside a cluster's directory, removed with it.
    init(dir: URL) throws {
        self.dir = dir
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        try ca("ca")
        try ca("other-ca")
        try leaf("collector", ca: "ca", san: "IP:127.0.0.1,DNS:collector.test")
        try leaf("agent", ca: "ca", san: "DNS:agent-1,URI:spoolship://agent/agent-1")
        try leaf("stranger", ca: "other-ca", san: "DNS:agent-1")
        try leaf("agent-2", ca: "ca", san: "DNS:agent-2")
        try leaf("agent-cn-only", ca: "ca", san: nil, cn: "agent-1")
        try leaf("collector-elsewhere", ca: "ca", san: "DNS:elsewhere.test")
        try leaf("agent-expired", ca: "ca", san: "DNS:agent-1,URI:spoolship://agent/agent-1",
                 dates: ("20200101000000Z", "20200201000000Z"))
    }

    func path(_ name: String) -> String { dir.appendingPathComponent(name).path }
    func files(_ leaf: String, ca: String = "ca") -> TLSFiles {
        TLSFiles(caFile: path("\(ca).pem"), certFile: path("\(leaf).pem"), keyFile: path("\(leaf).key"))
    }

    /// The daemons' TLS flags for `leaf` trusting `ca`.
    func flags(_ leaf: String, ca: String = "ca") -> [String] {
        ["--tls-ca-file", path("\(ca).pem"), "--tls-cert-file", path("\(leaf).pem"), "--tls-key-file", path("\(leaf).key")]
    }

    /// The certificate's serial as `openssl x509 -serial` prints it (hex digits).
    func serial(_ leaf: String) throws -> String {
        try Self.serial(ofPEM: try String(contentsOfFile: path("\(leaf).pem"), encoding: .utf8), in: dir)
    }

    static func serial(ofPEM pem: String, in dir: URL) throws -> String {
        let tmp = dir.appendingPathComponent("serial-\(UInt64.random(in: 0...UInt64.max)).pem")
        try pem.write(to: tmp, atomically: true, encoding: .utf8)
        defer { Harness.remove(tmp) }
        let out = try openssl(["x509", "-in", tmp.path, "-noout", "-serial"], in: dir)
        guard let line = out.split(separator: "\n").first(where: { $0.hasPrefix("serial=") }) else { throw Harness.Failure("no serial in: \(out)") }
        return String(line.dropFirst("serial=".count))
    }

    @discardableResult
    static func openssl(_ args: [String], in dir: URL) throws -> String {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/openssl")
        p.arguments = args
        p.currentDirectoryURL = dir
        p.standardInput = FileHandle.nullDevice
        let out = Pipe()
        p.standardOutput = out
        p.standardError = out
        try p.run()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        let text = String(decoding: data, as: UTF8.self)
        guard p.terminationStatus == 0 else { throw Harness.Failure("openssl \(args.joined(separator: " ")): \(text)") }
        return text
    }

    private func ca(_ name: String) throws {
        try Self.openssl(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                          "-keyout", "\(name).key", "-out", "\(name).pem", "-days", "2", "-subj", "/CN=\(name)"], in: dir)
        // A minimal `openssl ca` setup beside it, for leaves with dates of their own.
        let db = dir.appendingPathComponent("\(name).db")
        try FileManager.default.createDirectory(at: db, withIntermediateDirectories: true)
        try Data().write(to: db.appendingPathComponent("index.txt"))
        try Data("\(String(format: "%04X", Int.random(in: 0x1000...0xEFFF)))\n".utf8).write(to: db.appendingPathComponent("serial"))
        try Data("""
            [ca]
            default_ca = this
            [this]
            database = \(db.path)/index.txt
            new_certs_dir = \(db.path)
            serial = \(db.path)/serial
            default_md = sha256
            policy = anything
            copy_extensions = none
            unique_subject = no
            [anything]
            commonName = supplied

            """.utf8).write(to: dir.appendingPathComponent("\(name).cnf"))
    }

    /// A leaf certificate `name` signed by `ca`, with `san` (an openssl subjectAltName value, or
    /// nil for none), CN `cn`, and either valid for two days from now or for `dates` (start,
    /// end as YYYYMMDDHHMMSSZ).
    func leaf(_ name: String, ca: String = "ca", san: String?, cn: String? = nil, dates: (String, String)? = nil) throws {
        try Self.openssl(["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                          "-keyout", "\(name).key", "-out", "\(name).csr", "-subj", "/CN=\(cn ?? "\(name)-cn-is-never-used")"], in: dir)
        let ext = dir.appendingPathComponent("\(name).ext")
        var lines = ["[leaf]", "basicConstraints = CA:FALSE"]
        if let san { lines.append("subjectAltName = \(san)") }
        try Data((lines.joined(separator: "\n") + "\n").utf8).write(to: ext)
        if let (start, end) = dates {
            try Self.openssl(["ca", "-batch", "-config", "\(ca).cnf", "-cert", "\(ca).pem", "-keyfile", "\(ca).key", "-in", "\(name).csr",
                              "-out", "\(name).pem", "-startdate", start, "-enddate", end, "-extfile", "\(name).ext", "-extensions", "leaf",
                              "-notext"], in: dir)
        } else {
            try Self.openssl(["x509", "-req", "-in", "\(name).csr", "-CA", "\(ca).pem", "-CAkey", "\(ca).key", "-CAcreateserial",
                              "-out", "\(name).pem", "-days", "2", "-extfile", "\(name).ext", "-extensions", "leaf"], in: dir)
        }
    }
}
