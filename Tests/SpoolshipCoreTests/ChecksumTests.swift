import SpoolshipCore
import Testing

/// The CRC-32 on the wire is zlib's (rule R5); ISA-L computes it. They must agree for every
/// length and alignment, fed at once or in pieces, and combined from slices.
@Suite struct ZlibCompatibleCRCTests {
    @Test func isalCRC_equalsZlibs_forEveryLengthAndSplit() {
        #expect(CRC32.of(Array("123456789".utf8)) == 0xcbf4_3926, "the standard check value")
        var rng = SystemRandomNumberGenerator()
        let data = (0..<70_000).map { _ in UInt8.random(in: 0...255, using: &rng) }
        data.withUnsafeBytes { all in
            for start in [0, 1, 3, 7, 64] {
                for length in Array(0...130) + [4095, 4096, 4097, 65_536, 69_000] where start + length <= data.count {
                    let slice = UnsafeRawBufferPointer(rebasing: all[start..<start + length])
                    var c = CRC32()
                    c.update(slice)
                    #expect(c.value == CRC32.zlib(slice), "length \(length) at offset \(start)")
                }
            }
            var pieces = CRC32()
            var at = 0
            for n in [1, 2, 5, 100, 4096, 33, 60_000] {
                pieces.update(UnsafeRawBufferPointer(rebasing: all[at..<at + n]))
                at += n
            }
            #expect(pieces.value == CRC32.zlib(UnsafeRawBufferPointer(rebasing: all[0..<at])), "fed in pieces")
            let a = CRC32.of(data[0..<30_000]), b = CRC32.of(data[30_000...])
            #expect(CRC32.combine(a, b, lengthOfB: Int64(data.count - 30_000)) == CRC32.zlib(all), "combined from slices")
        }
    }
}
