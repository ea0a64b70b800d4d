@testable import SpoolshipCore
import Testing

@Suite struct LogNamesTests {
    @Test func segmentNames_sortInStreamOrder_andParseBack() {
        let names = [1, 2, 9, 10, 99, 100, 12345, 9_999_999_999].map { LogNames.segmentName(stream: "api.log", seq: UInt64($0), compressed: false) }
        #expect(names == names.sorted(), "name order is stream order")
        #expect(names[0] == "api.log.0000000001")
        #expect(LogNames.segmentName(stream: "api.log", seq: 7, compressed: true) == "api.log.0000000007.gz")
        for seq: UInt64 in [1, 42, 9_999_999_999] {
            for gz in [false, true] {
                let n = LogNames.segmentName(stream: "a.b.log", seq: seq, compressed: gz)
                #expect(LogNames.parse(segmentName: n) == LogNames.Parsed(stream: "a.b.log", seq: seq, compressed: gz))
            }
        }
    }

    @Test func parse_refusesWhatIsNotASegmentName() {
        for n in ["api.log", "api.log.123", "api.log.00000000012", "api.log.000000000x", ".0000000001", "api.log.0000000001.bz2", "api.log.0000000001~1"] {
            #expect(LogNames.parse(segmentName: n) == nil, "\(n)")
        }
    }

    @Test func glob_matchesStreams_neverHiddenOrTemporaryFiles() {
        #expect(LogNames.matches("*.log", "api.log"))
        #expect(!LogNames.matches("*.log", "api.log.0000000001"))
        #expect(!LogNames.matches("*.log", "api.log.old"))
        #expect(!LogNames.matches("*", ".spoolship"))
        #expect(!LogNames.matches("*", ".api.log"))
        #expect(!LogNames.matches("*", "upload.tmp"))
        #expect(LogNames.matches("app-[0-9].txt", "app-3.txt"))
    }

    @Test func logsArgument_nameDirAndGlob() throws {
        let a = try LogNames.parseLogSpoolArgument("app=/var/log/app")
        #expect(a.name == "app" && a.directory == "/var/log/app" && a.glob == "*.log")
        let b = try LogNames.parseLogSpoolArgument("app=/var/log/app:*.txt")
        #expect(b.directory == "/var/log/app" && b.glob == "*.txt")
        // A ':' in the directory is kept when what follows it holds a '/'.
        let c = try LogNames.parseLogSpoolArgument("app=/srv/a:b/logs")
        #expect(c.directory == "/srv/a:b/logs" && c.glob == "*.log")
        for bad in ["app", "=/var/log", "bad/name=/var/log", "app=", "app=/var/log:"] {
            #expect(throws: (any Error).self, "\(bad)") { try LogNames.parseLogSpoolArgument(bad) }
        }
    }

    @Test func byteSizes() {
        #expect(ByteSize.parse("1048576") == 1_048_576)
        #expect(ByteSize.parse("512K") == 512 << 10)
        #expect(ByteSize.parse("64MiB") == 64 << 20)
        #expect(ByteSize.parse(" 2 G ") == 2 << 30)
        for bad in ["", "0", "-1", "ten", "5T", "1.5M", "99999999999999999999G"] {
            #expect(ByteSize.parse(bad) == nil, "\(bad)")
        }
    }
}
