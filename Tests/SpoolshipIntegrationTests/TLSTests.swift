import Foundation
import Glibc
import SpoolshipIO
import Synchronization
import Testing

/// The TLS layer on real sockets on 127.0.0.1, with real certificates: mutual verification,
/// names from the SAN only, refusals on both sides before any payload, and one connection
/// used by a reader and a writer thread at once.
@Suite struct TLSTests {
    /// A server and a client connection over loopback, handshaken (or the errors of each side).
    struct Pair {
        var server: Result<TLSConnection, Error>
        var client: Result<TLSConnection, Error>
    }

    static func connect(server: TLSContext, client: TLSContext) throws -> Pair {
        let (listener, port) = try Socket.listen(Endpoint(host: "127.0.0.1", port: 0))
        defer { listener.shutdown() }
        let serverSide = Mutex<Result<TLSConnection, Error>?>(nil)
        let done = DispatchSemaphore(value: 0)
        Thread.detachNewThread {
            let r: Result<TLSConnection, Error> = Result {
                guard case .accepted(let s) = try listener.accept(timeout: 10) else { throw Harness.Failure("no connection came") }
                let c = try TLSConnection(server, socket: s)
                try c.handshake(deadline: Harness.monotonicNow() + 10)
                return c
            }
            serverSide.withLock { $0 = r }
            done.signal()
        }
        let clientSide: Result<TLSConnection, Error> = Result {
            let s = try Socket.connect(Endpoint(host: "127.0.0.1", port: port), timeout: 10)
            let c = try TLSConnection(client, socket: s)
            try c.handshake(deadline: Harness.monotonicNow() + 10)
            return c
        }
        // A client that refuses the server has closed its socket (its connection was released
        // with the failure): the server's handshake ends too.
        guard done.wait(timeout: .now() + 20) == .success else { throw Harness.Failure("the server's handshake did not end") }
        return Pair(server: serverSide.withLock { $0! }, client: clientSide)
    }

    @Test func mutualTLS_verifiesBothSides_namesComeFromTheSAN_andFilesShip() throws {
        let pki = try TestPKI("tls-ok")
        defer { Harness.remove(pki.dir) }
        let server = try TLSContext(role: .server, files: pki.files("collector"))
        let client = try TLSContext(role: .client(serverName: "127.0.0.1"), files: pki.files("agent"))
        let pair = try Self.connect(server: server, client: client)
        let s = try pair.server.get(), c = try pair.client.get()
        #expect(Set(s.peerNames()) == ["agent-1", "spoolship://agent/agent-1"], "the agent's SAN entries, never its CN")
        #expect(Set(c.peerNames()) == ["collector.test"], "DNS and URI names only")
        #expect(c.agreed == "TLSv1.3 TLS_AES_128_GCM_SHA256", "AES-128-GCM is chosen first")
        if !c.kernelSend {
            print("TLSTests: this kernel has no TLS (kernel TLS off): the pread + SSL_write path runs")
        }
        // A file sent through the connection arrives whole (with kernel TLS: SSL_sendfile).
        let file = pki.dir.appendingPathComponent("payload")
        try Harness.writeRandomFile(file, size: 3 << 20 + 17, seed: 7)
        let fd = try Files.open(file.path, O_RDONLY)
        let expected = try #require(FileManager.default.contents(atPath: file.path))
        let received = Mutex<[UInt8]>([])
        let reader = Thread {
            var got: [UInt8] = []
            while got.count < expected.count, let chunk = try? s.receive(max: 1 << 16, deadline: Harness.monotonicNow() + 10), !chunk.isEmpty {
                got += chunk
            }
            received.withLock { $0 = got }
        }
        reader.start()
        try c.sendFile(fd, offset: 0, count: Int64(expected.count), deadline: Harness.monotonicNow() + 20)
        #expect(Harness.waitUntil(timeout: 20) { received.withLock { $0.count } == expected.count })
        #expect(received.withLock { $0 } == Array(expected))
    }

    @Test func oneConnection_readAndWrittenByTwoThreadsAtOnce() throws {
        let pki = try TestPKI("tls-duplex")
        defer { Harness.remove(pki.dir) }
        let pair = try Self.connect(server: try TLSContext(role: .server, files: pki.files("collector")),
                                    client: try TLSContext(role: .client(serverName: "collector.test"), files: pki.files("agent")))
        let s = try pair.server.get(), c = try pair.client.get()
        let size = 8 << 20
        let a = (0..<size).map { UInt8(truncatingIfNeeded: $0 &* 31) }
        let b = (0..<size).map { UInt8(truncatingIfNeeded: $0 &* 17 &+ 5) }
        let got = Mutex<(toServer: Int, toClient: Int, same: Bool)>((0, 0, true))
        // Each side writes on one thread while another reads: the writes and reads of one
        // connection run at the same time.
        func pump(_ conn: TLSConnection, send: [UInt8], expect: [UInt8], server: Bool) {
            Thread.detachNewThread { try? conn.sendAll(send, deadline: Harness.monotonicNow() + 30) }
            Thread.detachNewThread {
                var n = 0
                while n < expect.count, let chunk = try? conn.receive(max: 1 << 16, deadline: Harness.monotonicNow() + 30), !chunk.isEmpty {
                    let ok = Array(expect[n..<n + chunk.count]) == chunk
                    n += chunk.count
                    got.withLock { g in
                        if server { g.toServer = n } else { g.toClient = n }
                        g.same = g.same && ok
                    }
                }
            }
        }
        pump(c, send: a, expect: b, server: false)
        pump(s, send: b, expect: a, server: true)
        #expect(Harness.waitUntil(timeout: 60) { got.withLock { $0.toServer == size && $0.toClient == size } })
        #expect(got.withLock { $0.same })
    }

    @Test func refused_beforeAnyPayload_withTheReasonOnEachSide() throws {
        let pki = try TestPKI("tls-refused")
        defer { Harness.remove(pki.dir) }
        let server = try TLSContext(role: .server, files: pki.files("collector"))

        // An agent certificate from another CA: the collector says so.
        let stranger = try TLSContext(role: .client(serverName: "127.0.0.1"), files: pki.files("stranger", ca: "ca"))
        var pair = try Self.connect(server: server, client: stranger)
        #expect(throws: (any Error).self) { try pair.server.get() }
        #expect("\(pair.server)".contains("certificate verify failed") || "\(pair.server)".contains("unknown ca") ||
                "\(pair.server)".contains("unable to get local issuer"), "\(pair.server)")

        // A collector whose certificate does not hold the name the agent asks for.
        let wrongName = try TLSContext(role: .client(serverName: "elsewhere.test"), files: pki.files("agent"))
        pair = try Self.connect(server: server, client: wrongName)
        #expect("\(pair.client)".contains("hostname mismatch"), "\(pair.client)")
        #expect(throws: (any Error).self) { try pair.server.get() }

        // A collector from another CA, as the agent sees it.
        let otherTrust = try TLSContext(role: .client(serverName: "127.0.0.1"), files: pki.files("agent", ca: "other-ca"))
        pair = try Self.connect(server: server, client: otherTrust)
        #expect("\(pair.client)".contains("certificate verify failed") || "\(pair.client)".contains("unable to get local issuer"), "\(pair.client)")
    }

    @Test func aClientWithoutCertificate_isRefusedByTheServer() throws {
        let pki = try TestPKI("tls-nocert")
        defer { Harness.remove(pki.dir) }
        let server = try TLSContext(role: .server, files: pki.files("collector"))
        let (listener, port) = try Socket.listen(Endpoint(host: "127.0.0.1", port: 0))
        defer { listener.shutdown() }
        // The openssl command as the client, with the CA but no certificate of its own.
        let client = Process()
        client.executableURL = URL(fileURLWithPath: "/usr/bin/openssl")
        client.arguments = ["s_client", "-connect", "127.0.0.1:\(port)", "-CAfile", pki.path("ca.pem"), "-quiet"]
        client.standardInput = Pipe()
        client.standardOutput = Pipe()
        client.standardError = Pipe()
        try client.run()
        defer { if client.isRunning { client.terminate() } }
        guard case .accepted(let sock) = try listener.accept(timeout: 10) else { throw Harness.Failure("openssl s_client did not connect") }
        let conn = try TLSConnection(server, socket: sock)
        let error = #expect(throws: (any Error).self) { try conn.handshake(deadline: Harness.monotonicNow() + 10) }
        #expect("\(error.map { "\($0)" } ?? "")".contains("peer did not return a certificate"), "\(String(describing: error))")
    }

    @Test func aKeyThatDoesNotMatch_isRefusedAtLoad_namingTheFiles() throws {
        let pki = try TestPKI("tls-files")
        defer { Harness.remove(pki.dir) }
        let mismatched = TLSFiles(caFile: pki.path("ca.pem"), certFile: pki.path("agent.pem"), keyFile: pki.path("collector.key"))
        let error = #expect(throws: TLSError.self) { try TLSContext(role: .server, files: mismatched) }
        #expect(error?.what == "the key in \(pki.path("collector.key")) does not belong to the certificate in \(pki.path("agent.pem"))")
        let missing = TLSFiles(caFile: pki.path("nope.pem"), certFile: pki.path("agent.pem"), keyFile: pki.path("agent.key"))
        let e2 = #expect(throws: TLSError.self) { try TLSContext(role: .server, files: missing) }
        #expect(e2?.what == "cannot read the CA file \(pki.path("nope.pem"))")
    }
}
