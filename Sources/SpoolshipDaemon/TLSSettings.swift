import SpoolshipIO

/// `ktls`: whether TLS connections hand their keys to the kernel (kernel TLS), so that the
/// payload goes from the page cache into the kernel's encryption (the agent's `SSL_sendfile`)
/// and out of the kernel's decryption into the file (the collector's splice).
public enum KernelTLSMode: String, Sendable, Equatable, CaseIterable {
    /// Where the kernel and the cipher allow it; user space otherwise.
    case auto
    /// Never: user space always.
    case off
    /// The daemon does not start without kernel TLS, and a connection whose data path the
    /// kernel did not take is closed.
    case require
}

/// TLS as a daemon runs it: the files, the lowest version, kernel TLS, and (the agent's) the
/// name the collector's certificate must hold. nil in a configuration: plain TCP.
public struct TLSSettings: Sendable, Equatable {
    public var files: TLSFiles
    public var minVersion: TLSVersion = .tls12
    public var kernelTLS: KernelTLSMode = .auto
    /// The agent's: the name (or IP address) the collector's certificate must hold.
    public var serverName: String?

    public init(files: TLSFiles) { self.files = files }

    /// Reads the files into a context: the certificate, the key and the CA are read now (at a
    /// start, and again at each reload). A file that cannot be read, or a key that does not
    /// belong to the certificate, is a `SettingsError` naming the file.
    ///
    /// With `require` on the collector and an OpenSSL older than 3.2, TLS 1.2 is the highest
    /// version: OpenSSL 3.0 gives the kernel the receive keys of TLS 1.2 only.
    public func context(server: Bool) throws -> TLSContext {
        let role: TLSContext.Role = server ? .server : .client(serverName: serverName ?? "")
        var maxVersion: TLSVersion?
        if server && kernelTLS == .require && !TLSContext.kernelReceivesTLS13 {
            guard minVersion == .tls12 else {
                throw SettingsError("ktls = require on the collector needs TLS 1.2 with \(TLSContext.libraryVersion) (it gives the kernel the receive keys of TLS 1.2 only), but tls.min-version is \(minVersion.rawValue)")
            }
            maxVersion = .tls12
        }
        do {
            return try TLSContext(role: role, files: files, minVersion: minVersion, maxVersion: maxVersion,
                                  kernelTLS: kernelTLS != .off)
        } catch let e as TLSError {
            throw SettingsError("TLS: \(e)")
        }
    }
}

/// The `[tls]` table of a config file, as read (nil: not given). Checked when read: the
/// version and `ktls` are among the known values.
public struct TLSKeys: Sendable, Equatable {
    public var caFile: String?
    public var certFile: String?
    public var keyFile: String?
    public var minVersion: String?
    public var kernelTLS: String?
    public var serverName: String?
    public init() {}
}

extension TableReader {
    /// The `[tls]` table (`tls.ca-file = ...` at the top level is the same table in TOML):
    /// `ca-file`, `cert-file`, `key-file`, `min-version`, `ktls`, and `server-name` where
    /// `serverName` (the agent).
    public mutating func tls(serverName: Bool) throws -> TLSKeys {
        var k = TLSKeys()
        guard let t = try table("tls") else { return k }
        var r = TableReader(file: file, table: t, place: "[tls]")
        k.caFile = try r.string("ca-file")
        k.certFile = try r.string("cert-file")
        k.keyFile = try r.string("key-file")
        k.minVersion = try r.string("min-version")
        if let v = k.minVersion, TLSVersion(rawValue: v) == nil { throw r.fail("min-version", "\"1.2\" or \"1.3\", got '\(v)'") }
        k.kernelTLS = try r.string("ktls")
        if let v = k.kernelTLS, KernelTLSMode(rawValue: v) == nil { throw r.fail("ktls", "\"auto\", \"off\" or \"require\", got '\(v)'") }
        if serverName { k.serverName = try r.string("server-name") }
        try r.rejectUnknown()
        return k
    }
}

extension DaemonFlags {
    /// TLS: these flags over the file's `[tls]` keys. nil when neither sets any of the three
    /// files. `serverName` is the agent's `--tls-server-name` over the file's, and
    /// `defaultServerName` its default (the collector's host); nil on the collector.
    public func tls(file: TLSKeys, serverName: String? = nil, defaultServerName: String? = nil) throws -> TLSSettings? {
        let ca = tlsCAFile ?? file.caFile
        let cert = tlsCertFile ?? file.certFile
        let key = tlsKeyFile ?? file.keyFile
        let version = tlsMinVersion ?? file.minVersion
        let ktls = kernelTLS ?? file.kernelTLS
        let name = serverName ?? file.serverName
        let named: [(String, String?)] = [("tls.ca-file (--tls-ca-file)", ca), ("tls.cert-file (--tls-cert-file)", cert),
                                          ("tls.key-file (--tls-key-file)", key)]
        let missing = named.filter { $0.1 == nil }.map(\.0)
        if missing.count == named.count {
            let stray = [("tls.min-version", version), ("tls.ktls", ktls), ("tls.server-name", name)].filter { $0.1 != nil }.map(\.0)
            if !stray.isEmpty {
                throw SettingsError("\(stray.joined(separator: ", ")) given without TLS: TLS needs tls.ca-file, tls.cert-file and tls.key-file")
            }
            return nil
        }
        guard missing.isEmpty, let ca = ca, let cert = cert, let key = key else {
            throw SettingsError("TLS needs tls.ca-file, tls.cert-file and tls.key-file together; missing: \(missing.joined(separator: ", "))")
        }
        var s = TLSSettings(files: TLSFiles(caFile: ca, certFile: cert, keyFile: key))
        if let v = version {
            guard let parsed = TLSVersion(rawValue: v) else { throw SettingsError("--tls-min-version must be 1.2 or 1.3; got '\(v)'") }
            s.minVersion = parsed
        }
        if let m = ktls {
            guard let parsed = KernelTLSMode(rawValue: m) else { throw SettingsError("--ktls must be auto, off or require; got '\(m)'") }
            s.kernelTLS = parsed
        }
        if let n = name, n.isEmpty { throw SettingsError("tls.server-name must not be empty") }
        s.serverName = name ?? defaultServerName
        if s.kernelTLS == .require, let why = KernelTLS.unavailableReason() {
            throw SettingsError("ktls = require, but \(why)")
        }
        return s
    }
}
