import Testing
@testable import SpoolshipCore

@Suite struct NamesTests {
    @Test(arguments: ["a", "report 2026.csv", "x.log.000001", "ünïcödé", String(repeating: "n", count: 255), "a..b", "-dash"])
    func validSegmentNames_pass(name: String) throws {
        try Names.validateSegmentName(name)
    }

    @Test func hostileSegmentNames_areRefusedWithTheReason() {
        let cases: [(String, NameError)] = [
            ("", .empty(what: "segment name")),
            ("../x", .hasSlash(what: "segment name")),
            ("/etc/passwd", .hasSlash(what: "segment name")),
            ("a/../../b", .hasSlash(what: "segment name")),
            ("..", .dotName(what: "segment name")),
            (".", .dotName(what: "segment name")),
            ("a\0b", .hasNUL(what: "segment name")),
            ("a\nb", .hasControl(what: "segment name", byte: 0x0a)),
            ("a\u{7f}", .hasControl(what: "segment name", byte: 0x7f)),
            (".hidden", .hidden(what: "segment name")),
            (String(repeating: "x", count: 4096), .tooLong(what: "segment name", bytes: 4096, max: 255)),
        ]
        for (name, expected) in cases {
            #expect(throws: expected) { try Names.validateSegmentName(name) }
        }
    }

    @Test func identifiers_allowOnlyAPortableSet() throws {
        try Names.validateIdentifier("web-1.example_com", what: "agent id")
        #expect(throws: NameError.hasSlash(what: "agent id")) { try Names.validateIdentifier("a/b", what: "agent id") }
        #expect(throws: NameError.hidden(what: "agent id")) { try Names.validateIdentifier(".spoolship", what: "agent id") }
        #expect(throws: NameError.badCharacter(what: "spool name", character: " ")) { try Names.validateIdentifier("a b", what: "spool name") }
        #expect(throws: NameError.tooLong(what: "agent id", bytes: 65, max: 64)) { try Names.validateIdentifier(String(repeating: "a", count: 65), what: "agent id") }
    }

    @Test func errorsReadAsSentences() {
        #expect("\(NameError.hasSlash(what: "segment name"))" == "segment name contains '/'")
        #expect("\(NameError.tooLong(what: "segment name", bytes: 300, max: 255))" == "segment name is 300 bytes long, more than the 255 allowed")
    }

    @Test func inProgressFiles_areDotfilesAndTmp() {
        #expect(Names.isInProgress(".upload"))
        #expect(Names.isInProgress("x.tmp"))
        #expect(!Names.isInProgress("x.tmp.gz"))
        #expect(!Names.isInProgress("x"))
    }

    @Test func alternateNames_neverRepeatTheOriginal() {
        #expect(Names.alternateName("a.txt", attempt: 0) == "a.txt")
        #expect(Names.alternateName("a.txt", attempt: 2) == "a.txt~2")
    }

    @Test func partialNames_dependOnTheWholeKey_andAreSafe() {
        let k = SegmentKey(spool: "inbox", name: "../../etc/passwd", size: 10, crc: 1)
        let n = k.partialFileName
        #expect(n.count == 32 + 5)
        #expect(n.allSatisfy { $0.isHexDigit || $0 == "." || $0 == "p" || $0 == "a" || $0 == "r" || $0 == "t" })
        #expect(n == SegmentKey(spool: "inbox", name: "../../etc/passwd", size: 10, crc: 1).partialFileName)
        #expect(n != SegmentKey(spool: "inbox", name: "../../etc/passwd", size: 11, crc: 1).partialFileName)
        #expect(n != SegmentKey(spool: "inbox", name: "../../etc/passwd", size: 10, crc: 2).partialFileName)
        #expect(n != SegmentKey(spool: "inbox2", name: "../../etc/passwd", size: 10, crc: 1).partialFileName)
    }

    @Test func crc32_matchesTheKnownCheckValue() {
        #expect(CRC32.of(Array("123456789".utf8)) == 0xCBF4_3926)
        var c = CRC32()
        c.update(Array("12345".utf8))
        c.update(Array("6789".utf8))
        #expect(c.value == 0xCBF4_3926)
    }
}

@Suite struct ChecksumTests {
    @Test func combine_equalsTheChecksumOfTheWhole() {
        var rng = SystemRandomNumberGenerator()
        let bytes = (0..<100_000).map { _ in UInt8.random(in: 0...255, using: &rng) }
        for cut in [0, 1, 4096, 99_999, 100_000] {
            let a = CRC32.of(bytes[..<cut]), b = CRC32.of(bytes[cut...])
            #expect(CRC32.combine(a, b, lengthOfB: Int64(bytes.count - cut)) == CRC32.of(bytes))
        }
    }
}
