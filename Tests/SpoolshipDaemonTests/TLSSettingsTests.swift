import Foundation
import SpoolshipAgent
import SpoolshipCollector
import SpoolshipDaemon
import SpoolshipIO
import Testing

/// A CA and a certificate with its key, made by the openssl command in `dir`.
func makeCertificate(in d: TempDir) throws -> (ca: String, cert: String, key: String, otherKey: String) {
    func openssl(_ args: [String]) throws {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/openssl")
        p.arguments = args
        p.currentDirectoryURL = URL(fileURLWithPath: d.path)
        p.standardOutput = FileHandle.nullDevice
        p.standardError = FileHandle.nullDevice
        try p.run()
        p.waitUntilExit()
        guard p.terminationStatus == 0 else { throw SettingsError("openssl \(args.joined(separator: " ")) failed") }
    }
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    try openssl(["req", "-x509"] + ec + ["-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=ca"])
    try openssl(["req"] + ec + ["-keyout", "leaf.key", "-out", "leaf.csr", "-subj", "/CN=leaf"])
    try openssl(["x509", "-req", "-in", "leaf.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-out", "leaf.pem", "-days", "2"])
    try openssl(["genpkey", "-algorithm", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", "other.key"])
    return ("\(d.path)/ca.pem", "\(d.path)/leaf.pem", "\(d.path)/leaf.key", "\(d.path)/other.key")
}

@Test func tls_fileKeysAndFlags_flagsWin_serverNameDefaultsToTheCollectorsHost() throws {
    let d = try TempDir()
    let c = try makeCertificate(in: d)
    let file = try d.write("agent.toml", """
        collector = "collector.example.net:7070"
        agent-id = "a"
        state-dir = "/s"
        tls.ca-file = "\(c.ca)"
        tls.cert-file = "\(c.cert)"
        tls.key-file = "\(c.key)"
        tls.min-version = "1.3"
        [[spool]]
        name = "in"
        dir = "/in"
        """)
    let s = try resolveAgent(agentFlags(config: file))
    #expect(s.agent.tls?.files == TLSFiles(caFile: c.ca, certFile: c.cert, keyFile: c.key))
    #expect(s.agent.tls?.minVersion == .tls13)
    #expect(s.agent.tls?.kernelTLS == .auto)
    #expect(s.agent.tls?.serverName == "collector.example.net")
    #expect(s.tlsContext != nil)
    let flagged = try resolveAgent(agentFlags(config: file) {
        $0.tlsServerName = "10.1.2.3"
        $0.common.tlsMinVersion = "1.2"
        $0.common.kernelTLS = "off"
    })
    #expect(flagged.agent.tls?.serverName == "10.1.2.3")
    #expect(flagged.agent.tls?.minVersion == .tls12)
    #expect(flagged.agent.tls?.kernelTLS == .off)
    // Without the three files: plain TCP.
    let plain = try resolveAgent(agentFlags { $0.collector = "h:1"; $0.agentID = "a"; $0.stateDir = "/s"; $0.spool = ["in=/in"] })
    #expect(plain.agent.tls == nil && plain.tlsContext == nil)
}

@Test func tls_collector_sectionForm_andErrorsNameWhatIsWrong() throws {
    let d = try TempDir()
    let c = try makeCertificate(in: d)
    let file = try d.write("collector.toml", """
        listen = "127.0.0.1:0"
        data-dir = "/d"
        [tls]
        ca-file = "\(c.ca)"
        cert-file = "\(c.cert)"
        key-file = "\(c.key)"
        ktls = "off"
        """)
    let s = try resolveCollector(collectorFlags(config: file))
    #expect(s.collector.tls?.kernelTLS == .off)
    #expect(s.tlsContext != nil)
    // Two of three files.
    #expect(settingsError { _ = try resolveCollector(collectorFlags { $0.listen = "127.0.0.1:0"; $0.dataDir = "/d"; $0.common.tlsCAFile = c.ca; $0.common.tlsCertFile = c.cert }) }
        == "TLS needs tls.ca-file, tls.cert-file and tls.key-file together; missing: tls.key-file (--tls-key-file)")
    // A TLS setting without TLS.
    #expect(settingsError { _ = try resolveCollector(collectorFlags { $0.listen = "127.0.0.1:0"; $0.dataDir = "/d"; $0.common.kernelTLS = "off" }) }
        == "tls.ktls given without TLS: TLS needs tls.ca-file, tls.cert-file and tls.key-file")
    // A key that is not the certificate's, a file that is not there.
    #expect(settingsError { _ = try resolveCollector(collectorFlags(config: file) { $0.common.tlsKeyFile = c.otherKey }) }
        == "TLS: the key in \(c.otherKey) does not belong to the certificate in \(c.cert)")
    #expect(settingsError { _ = try resolveCollector(collectorFlags(config: file) { $0.common.tlsCAFile = "/nonexistent/ca.pem" }) }
        .hasPrefix("TLS: cannot read the CA file /nonexistent/ca.pem"))
    // Values checked when the file is read.
    let bad = try d.write("bad.toml", """
        listen = "127.0.0.1:0"
        data-dir = "/d"
        tls.min-version = "1.1"
        """)
    #expect(settingsError { _ = try resolveCollector(collectorFlags(config: bad)) }
        == "\(bad): key 'min-version' in [tls]: expected \"1.2\" or \"1.3\", got '1.1'")
    #expect(settingsError { _ = try resolveCollector(collectorFlags(config: file) { $0.common.kernelTLS = "always" }) }
        == "--ktls must be auto, off or require; got 'always'")
}

@Test func tls_requireKernelTLS_refusesToStartWhereTheKernelHasNone() throws {
    let d = try TempDir()
    let c = try makeCertificate(in: d)
    let flags = collectorFlags {
        $0.listen = "127.0.0.1:0"
        $0.dataDir = "/d"
        $0.common.tlsCAFile = c.ca
        $0.common.tlsCertFile = c.cert
        $0.common.tlsKeyFile = c.key
        $0.common.kernelTLS = "require"
    }
    if let why = KernelTLS.unavailableReason() {
        #expect(settingsError { _ = try resolveCollector(flags) } == "ktls = require, but \(why)")
        #expect(why.contains("no TLS"))
    } else {
        // Where the kernel has TLS, the collector starts, capped at TLS 1.2 with an OpenSSL
        // that gives the kernel only TLS 1.2's receive keys.
        #expect(try resolveCollector(flags).collector.tls?.kernelTLS == .require)
    }
}
