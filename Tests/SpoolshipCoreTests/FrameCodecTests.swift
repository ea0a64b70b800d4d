import Testing
@testable import SpoolshipCore

/// Every frame type, with edge values, for the round-trip tests.
let sampleFrames: [Frame] = [
    .hello(Hello(agentID: "web-1")),
    .hello(Hello(version: 7, agentID: "a", auth: [1, 2, 3])),
    .challenge(nonce: Array(repeating: 7, count: 32), proof: Array(repeating: 9, count: 32)),
    .auth(proof: [1, 2, 3, 4]),
    .welcome(Welcome(collectorID: "collector-ä", maxFrameBody: 65536, maxSegmentSize: UInt64.max, window: 512)),
    .offer(Offer(tag: 1, kind: .blob, key: SegmentKey(spool: "inbox", name: "report 2026.csv", size: 0, crc: 0))),
    .offer(Offer(tag: UInt64.max, kind: .log, key: SegmentKey(spool: "s", name: String(repeating: "n", count: 255), size: UInt64.max, crc: UInt32.max))),
    .answer(tag: 9, status: .sendFrom, offset: 4096),
    .answer(tag: 10, status: .committed, offset: 1),
    .data(tag: 3, offset: 0, length: 1 << 40),
    .checkpoint(tag: 3, offset: 64 << 20),
    .committed(tag: 3, storedName: "a.txt~1"),
    .ping(42), .pong(42),
    .error(code: 3, tag: 0, message: "segment name contains '/'"),
]

@Suite struct FrameCodecTests {
    @Test func roundTrip_eachFrame_decodesToItself() throws {
        for f in sampleFrames {
            var d = FrameDecoder(expectPreamble: false)
            d.feed(FrameWriter.encode(f))
            #expect(try d.next() == f)
            #expect(try d.next() == nil)
            #expect(d.bufferedCount == 0)
        }
    }

    @Test func concatenatedFrames_withPreamble_decodeInOrder() throws {
        var bytes = Wire.preamble
        for f in sampleFrames { bytes += FrameWriter.encode(f) }
        var d = FrameDecoder()
        d.feed(bytes)
        var out: [Frame] = []
        while let f = try d.next() { out.append(f) }
        #expect(out == sampleFrames)
    }

    @Test func byteByByteDelivery_decodesTheSameFrames() throws {
        var bytes = Wire.preamble
        for f in sampleFrames { bytes += FrameWriter.encode(f) }
        var d = FrameDecoder()
        var out: [Frame] = []
        for b in bytes {
            d.feed([b])
            while let f = try d.next() { out.append(f) }
        }
        #expect(out == sampleFrames)
    }

    @Test func dataPayload_staysBufferedForTheCaller() throws {
        var d = FrameDecoder(expectPreamble: false)
        d.feed(FrameWriter.encode(.data(tag: 1, offset: 0, length: 3)) + [7, 8, 9] + FrameWriter.encode(.ping(1)))
        #expect(try d.next() == .data(tag: 1, offset: 0, length: 3))
        #expect(Array(d.takeBuffered(upTo: 3)) == [7, 8, 9])
        #expect(try d.next() == .ping(1))
    }

    @Test func badPreamble_namesHTTPandTLS() {
        var http = FrameDecoder()
        http.feed(Array("GET / HTTP/1.1\r\n".utf8))
        #expect(throws: FrameError.self) { try http.next() }
        do { _ = try http.next() } catch { #expect("\(error)".contains("HTTP")) }

        var tls = FrameDecoder()
        tls.feed([0x16, 0x03, 0x01, 0x02, 0x00])
        do { _ = try tls.next(); Issue.record("TLS bytes accepted") } catch { #expect("\(error)".contains("TLS")) }
    }

    @Test func partialPreamble_waitsThenChecks() throws {
        var d = FrameDecoder()
        d.feed(Array("SP".utf8))
        #expect(try d.next() == nil)
        d.feed(Array("X".utf8))
        #expect(throws: FrameError.badPreamble(Array("SPX".utf8))) { try d.next() }
    }

    @Test(arguments: [UInt64(1) << 63, UInt64(1) << 32 - 1, UInt64(65537)])
    func absurdLength_isRefusedFromTheHeaderAlone(length: UInt64) {
        // Only 4 bytes of length exist on the wire; 2^63 and 2^32 claims arrive as their low
        // 32 bits or as all ones. Either way the decoder refuses before buffering a body.
        let l = UInt32(truncatingIfNeeded: min(length, UInt64(UInt32.max)))
        var header: [UInt8] = [UInt8(l >> 24), UInt8(l >> 16 & 0xff), UInt8(l >> 8 & 0xff), UInt8(l & 0xff), FrameType.offer.rawValue]
        header += [0, 0]
        var d = FrameDecoder(expectPreamble: false)
        d.feed(header)
        #expect(throws: FrameError.tooLarge(length: UInt64(l), max: Wire.defaultMaxFrameBody)) { try d.next() }
    }

    @Test func malformedBodies_eachGetANamedError() {
        func decode(_ type: FrameType, _ body: [UInt8]) throws -> Frame {
            try FrameCodec.parseBody(type, body[...])
        }
        #expect(throws: FrameError.truncated(.hello, field: "version")) { try decode(.hello, [0]) }
        #expect(throws: FrameError.truncated(.hello, field: "agent_id")) { try decode(.hello, [0, 1, 0, 5, 65]) }
        #expect(throws: FrameError.invalidUTF8(.hello, field: "agent_id")) { try decode(.hello, [0, 1, 0, 2, 0xff, 0xfe, 0, 0]) }
        #expect(throws: FrameError.trailingBytes(.ping, count: 1)) { try decode(.ping, [0, 0, 0, 0, 0, 0, 0, 1, 9]) }
        #expect(throws: FrameError.badValue(.answer, field: "status", value: 7)) { try decode(.answer, [0, 0, 0, 0, 0, 0, 0, 1, 7, 0, 0, 0, 0, 0, 0, 0, 0]) }
        var offer = FrameWriter.encode(.offer(Offer(tag: 1, kind: .blob, key: SegmentKey(spool: "s", name: "n", size: 1, crc: 1))))
        offer[Wire.headerSize + 8] = 9  // kind
        #expect(throws: FrameError.badValue(.offer, field: "kind", value: 9)) { try decode(.offer, Array(offer[Wire.headerSize...])) }
        var d = FrameDecoder(expectPreamble: false)
        d.feed([0, 0, 0, 0, 0x7e])
        #expect(throws: FrameError.unknownType(0x7e)) { try d.next() }
    }

    @Test func everyPrefixOfAValidStream_isIncompleteNotAnError() throws {
        let bytes = Wire.preamble + sampleFrames.flatMap { FrameWriter.encode($0) }
        for cut in 0..<bytes.count {
            var d = FrameDecoder()
            d.feed(bytes[0..<cut])
            var n = 0
            while try d.next() != nil { n += 1 }
            #expect(n < sampleFrames.count)
        }
    }

    @Test func randomBytes_neverCrashTheDecoder() {
        var rng = SystemRandomNumberGenerator()
        for _ in 0..<2000 {
            var d = FrameDecoder(expectPreamble: Bool.random(using: &rng))
            let n = Int.random(in: 0..<64, using: &rng)
            d.feed((0..<n).map { _ in UInt8.random(in: 0...255, using: &rng) })
            for _ in 0..<4 { _ = try? d.next() }
        }
    }
}
