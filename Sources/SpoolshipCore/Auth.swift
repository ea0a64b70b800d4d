import Crypto
import Foundation

/// Mutual authentication of an agent and a collector that share a secret, without sending it:
///
///     agent -> HELLO     agent id, agent nonce (32 random bytes)
///     coll. -> CHALLENGE collector nonce (32 random bytes),
///                        HMAC-SHA256(secret, "spoolship-v1 collector" | id | agent nonce | collector nonce)
///     agent -> AUTH      HMAC-SHA256(secret, "spoolship-v1 agent" | id | collector nonce | agent nonce)
///
/// Each side checks the other's proof. A recorded session cannot be replayed: the proof an
/// agent must give covers a nonce the collector has just drawn, and the proof a collector gives
/// covers the agent's fresh nonce. The labels keep one side's proof from passing for the other's.
public enum Auth {
    public static let nonceSize = 32

    public static func nonce() -> [UInt8] {
        var g = SystemRandomNumberGenerator()
        return (0..<nonceSize).map { _ in UInt8.random(in: 0...255, using: &g) }
    }

    static func mac(_ secret: [UInt8], _ label: String, _ id: String, _ a: [UInt8], _ b: [UInt8]) -> [UInt8] {
        var msg = Array(label.utf8)
        msg.append(0)
        msg += Array(id.utf8)
        msg.append(0)
        msg += a
        msg += b
        let code = HMAC<SHA256>.authenticationCode(for: msg, using: SymmetricKey(data: secret))
        return Array(code)
    }

    public static func collectorProof(secret: [UInt8], agentID: String, agentNonce: [UInt8], collectorNonce: [UInt8]) -> [UInt8] {
        mac(secret, "spoolship-v1 collector", agentID, agentNonce, collectorNonce)
    }

    public static func agentProof(secret: [UInt8], agentID: String, agentNonce: [UInt8], collectorNonce: [UInt8]) -> [UInt8] {
        mac(secret, "spoolship-v1 agent", agentID, collectorNonce, agentNonce)
    }

    /// Compares in constant time (the length is not secret).
    public static func same(_ a: [UInt8], _ b: [UInt8]) -> Bool {
        guard a.count == b.count else { return false }
        var diff: UInt8 = 0
        for i in a.indices { diff |= a[i] ^ b[i] }
        return diff == 0
    }
}

/// The collector's `--agents FILE`: one `AGENT-ID SECRET` pair a line; `#` starts a comment;
/// blank lines are skipped. A secret is the rest of the line after the id and its spaces, and
/// must be at least 16 characters.
public enum AgentSecrets {
    public static let minimumSecretLength = 16

    public struct ParseError: Error, CustomStringConvertible, Equatable {
        public var line: Int
        public var message: String
        public var description: String { "line \(line): \(message)" }
    }

    public static func parse(_ text: String) throws -> [String: [UInt8]] {
        var out: [String: [UInt8]] = [:]
        for (i, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            var line = Substring(raw)
            if let hash = line.firstIndex(of: "#") { line = line[..<hash] }
            line = line.drop { $0 == " " || $0 == "\t" || $0 == "\r" }
            while let last = line.last, last == " " || last == "\t" || last == "\r" { line = line.dropLast() }
            if line.isEmpty { continue }
            guard let sep = line.firstIndex(where: { $0 == " " || $0 == "\t" }) else {
                throw ParseError(line: i + 1, message: "expected AGENT-ID SECRET, found one word")
            }
            let id = String(line[..<sep])
            let secret = String(line[sep...].drop { $0 == " " || $0 == "\t" })
            do { try Names.validateIdentifier(id, what: "agent id") } catch {
                throw ParseError(line: i + 1, message: "\(error)")
            }
            guard secret.count >= minimumSecretLength else {
                throw ParseError(line: i + 1, message: "the secret of \(id) is shorter than \(minimumSecretLength) characters")
            }
            guard out[id] == nil else { throw ParseError(line: i + 1, message: "agent id \(id) is listed twice") }
            out[id] = Array(secret.utf8)
        }
        return out
    }

    /// The agent's `--secret-file`: its secret on one line (surrounding whitespace dropped).
    public static func parseSecret(_ text: String) throws -> [UInt8] {
        let s = text.trimmingCharacters(in: .whitespacesAndNewlines)
        guard !s.contains("\n") else { throw ParseError(line: 2, message: "the secret file must hold one line") }
        guard s.count >= minimumSecretLength else {
            throw ParseError(line: 1, message: "the secret is shorter than \(minimumSecretLength) characters")
        }
        guard !s.contains("#") else {
            throw ParseError(line: 1, message: "the secret contains '#', which the collector's agents file reads as the start of a comment")
        }
        return Array(s.utf8)
    }
}
