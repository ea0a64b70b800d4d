// The fuzz target for the frame decoder and the collector's handshake (FuzzTarget).
//
// Built by `make fuzz` with -sanitize=fuzzer and -DSPOOLSHIP_LIBFUZZER: main hands over to
// libFuzzer's driver, which calls fuzzOne with each input. Built plainly (as `swift build` does), it is a
// replayer: `spoolship-fuzz FILE...` runs each file once and says how many it ran, and
// `spoolship-fuzz --seeds DIR` writes well-formed conversations to start fuzzing from.
import Foundation
import SpoolshipFuzzing

#if SPOOLSHIP_LIBFUZZER
import CSpoolshipFuzzDriver

func fuzzOne(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    FuzzTarget.run(size == 0 ? [] : Array(UnsafeBufferPointer(start: data, count: size)))
    return 0
}

/// SwiftPM makes this function the program's main; it hands over to libFuzzer's driver.
@_cdecl("spoolship_fuzz_main")
func fuzzMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    var count = argc
    var vector = argv
    return LLVMFuzzerRunDriver(&count, &vector, fuzzOne)
}
#else
@main
struct Replay {
    static func main() {
        let args = CommandLine.arguments
        if args.count == 3 && args[1] == "--seeds" {
            for (name, bytes) in FuzzTarget.seeds() {
                _ = FileManager.default.createFile(atPath: "\(args[2])/\(name)", contents: Data(bytes))
            }
            print("spoolship-fuzz: wrote \(FuzzTarget.seeds().count) seeds to \(args[2])")
            return
        }
        var ran = 0
        for path in CommandLine.arguments.dropFirst() {
            guard let data = FileManager.default.contents(atPath: path) else {
                FileHandle.standardError.write(Data("spoolship-fuzz: cannot read \(path)\n".utf8))
                exit(1)
            }
            FuzzTarget.run(Array(data))
            ran += 1
        }
        print("spoolship-fuzz: ran \(ran) inputs")
    }
}
#endif
