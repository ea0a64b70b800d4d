import CSpoolshipISAL
import CSpoolshipZlib

/// CRC-32 (ISO-HDLC, the one zlib and gzip use) computed incrementally.
///
/// Every sealed segment carries the CRC-32 of its whole file as shipped (rule R5); the collector
/// recomputes it over the bytes it made durable before the commit rename.
public struct CRC32: Sendable, Equatable {
    public private(set) var value: UInt32

    public init(value: UInt32 = 0) { self.value = value }

    /// With ISA-L's `crc32_gzip_refl`, the same CRC as zlib's `crc32` (a unit test checks
    /// them against each other) at about three times the speed.
    public mutating func update(_ bytes: UnsafeRawBufferPointer) {
        guard let base = bytes.baseAddress, bytes.count > 0 else { return }
        value = crc32_gzip_refl(value, base.assumingMemoryBound(to: UInt8.self), UInt64(bytes.count))
    }

    /// zlib's CRC-32, which ISA-L's must equal (for the tests).
    public static func zlib(_ bytes: UnsafeRawBufferPointer) -> UInt32 {
        guard let base = bytes.baseAddress, bytes.count > 0 else { return 0 }
        var p = base.assumingMemoryBound(to: Bytef.self)
        var left = bytes.count
        var c: UInt = 0
        while left > 0 {  // zlib's length is a 32-bit uInt: in slices
            let n = min(left, 1 << 30)
            c = crc32(c, p, uInt(n))
            p += n
            left -= n
        }
        return UInt32(truncatingIfNeeded: c)
    }

    public mutating func update<C: Collection>(_ bytes: C) where C.Element == UInt8 {
        if let done = bytes.withContiguousStorageIfAvailable({ update(UnsafeRawBufferPointer($0)) }) {
            return done
        }
        Array(bytes).withUnsafeBytes { update($0) }
    }

    /// The CRC-32 of A followed by B, from the CRC-32s of A and B and B's length.
    public static func combine(_ a: UInt32, _ b: UInt32, lengthOfB: Int64) -> UInt32 {
        UInt32(truncatingIfNeeded: crc32_combine(UInt(a), UInt(b), Int(lengthOfB)))
    }

    public static func of<C: Collection>(_ bytes: C) -> UInt32 where C.Element == UInt8 {
        var c = CRC32()
        c.update(bytes)
        return c.value
    }
}

public func hex32(_ v: UInt32) -> String {
    let s = String(v, radix: 16)
    return String(repeating: "0", count: max(0, 8 - s.count)) + s
}

public func hex64(_ v: UInt64) -> String {
    let s = String(v, radix: 16)
    return String(repeating: "0", count: max(0, 16 - s.count)) + s
}
