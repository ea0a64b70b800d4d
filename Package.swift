// swift-tools-version:6.0
import PackageDescription

// Module split (docs/ARCHITECTURE.md says more):
//   SpoolshipCore   pure logic: wire codec, names, segment keys, record logs. No syscalls.
//   SpoolshipIO     the Linux data path: fd owners, sendfile/splice/inotify/fsync wrappers.
//   SpoolshipDaemon what both daemons share: settings files, logging, systemd, metrics, the
//                   control socket, the lifecycle.
//   SpoolshipAgent  the agent (spool watching, sealing, rotation, the session, the reaper).
//   SpoolshipCollector the collector (handshake, admission, splicing, commit, the data dir).
//   SpoolshipDemo   the demo's harness (`spoolship demo`).
//   SpoolshipCommands the three programs' command lines; the executables are one line each.
//   C targets       libsystemd, zlib and ISA-L (system libraries), and a _GNU_SOURCE shim for
//                   the calls Swift's Glibc module hides (splice, pipe2, openat2, renameat2).

let package = Package(
    name: "spoolship",
    platforms: [.macOS(.v13)],
    products: [
        .executable(name: "spoolship-agent", targets: ["spoolship-agent"]),
        .executable(name: "spoolship-collector", targets: ["spoolship-collector"]),
        .executable(name: "spoolship", targets: ["spoolship"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/LebJe/TOMLKit", from: "0.6.0"),
        .package(url: "https://github.com/apple/swift-crypto", from: "3.12.3"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
    ],
    targets: [
        .systemLibrary(
            name: "CSpoolshipSystemd", pkgConfig: "libsystemd",
            providers: [.apt(["libsystemd-dev"])]),
        .systemLibrary(
            name: "CSpoolshipZlib", pkgConfig: "zlib",
            providers: [.apt(["zlib1g-dev"])]),
        .systemLibrary(
            name: "CSpoolshipISAL", pkgConfig: "libisal",
            providers: [.apt(["libisal-dev"])]),
        .systemLibrary(
            name: "CSpoolshipOpenSSL", pkgConfig: "openssl",
            providers: [.apt(["libssl-dev"])]),
        .target(
            name: "CSpoolshipLinux",
            cSettings: [.define("_GNU_SOURCE")],
            linkerSettings: [.linkedLibrary("isal")]),
        .target(
            name: "SpoolshipCore",
            dependencies: ["CSpoolshipZlib", "CSpoolshipISAL", .product(name: "Crypto", package: "swift-crypto")]),
        .target(
            name: "SpoolshipIO",
            dependencies: ["SpoolshipCore", "CSpoolshipLinux", "CSpoolshipZlib", "CSpoolshipOpenSSL"]),
        .target(
            name: "SpoolshipDaemon",
            dependencies: [
                "SpoolshipCore", "SpoolshipIO", "CSpoolshipSystemd",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "TOMLKit", package: "TOMLKit"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ]),
        .target(
            name: "SpoolshipAgent",
            dependencies: [
                "SpoolshipCore", "SpoolshipIO", "SpoolshipDaemon",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "TOMLKit", package: "TOMLKit"),
            ],),
        .target(
            name: "SpoolshipCollector",
            dependencies: [
                "SpoolshipCore", "SpoolshipIO", "SpoolshipDaemon",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "TOMLKit", package: "TOMLKit"),
            ]),
        .target(
            name: "SpoolshipDemo",
            dependencies: ["SpoolshipDaemon", "SpoolshipCollector"]),
        // The three programs (agent, collector, operator's tool) as one library, so that the
        // package can ship one binary that runs the program its name says.
        .target(
            name: "SpoolshipCommands",
            dependencies: [
                "SpoolshipCore", "SpoolshipIO", "SpoolshipDaemon", "SpoolshipAgent", "SpoolshipCollector",
                "SpoolshipDemo",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]),
        .executableTarget(name: "spoolship-agent", dependencies: ["SpoolshipCommands"]),
        .executableTarget(name: "spoolship-collector", dependencies: ["SpoolshipCommands"]),
        .executableTarget(name: "spoolship", dependencies: ["SpoolshipCommands"]),
        // A real log producer for the tests and the benchmark (not installed).
        .executableTarget(
            name: "log-producer",
            path: "Tests/LogProducer"),
        // The fuzz target (make fuzz) and the code it runs, which the tests also replay.
        .target(
            name: "SpoolshipFuzzing",
            dependencies: ["SpoolshipCore"],
            path: "Tests/FuzzTarget"),
        .target(
            name: "CSpoolshipFuzzDriver",
            path: "Tests/FuzzDriver"),
        .executableTarget(
            name: "spoolship-fuzz",
            dependencies: ["SpoolshipFuzzing", "CSpoolshipFuzzDriver"],
            path: "Tests/Fuzz"),
        .testTarget(
            name: "SpoolshipCoreTests",
            dependencies: ["SpoolshipCore", "SpoolshipFuzzing"]),
        // In-process tests of the agent's parts (the segment queue, a rotation model test).
        .testTarget(
            name: "SpoolshipAgentTests",
            dependencies: [
                "SpoolshipAgent", "SpoolshipCore", "SpoolshipIO", "SpoolshipDaemon",
                .product(name: "Logging", package: "swift-log"),
            ]),
        // In-process tests of what needs no daemon: settings precedence, the lifecycle runner,
        // the mapped checksum and its SIGBUS guard.
        .testTarget(
            name: "SpoolshipDaemonTests",
            dependencies: ["SpoolshipDaemon", "SpoolshipAgent", "SpoolshipCollector", "SpoolshipIO", "SpoolshipCore", "CSpoolshipLinux"]),
        .testTarget(
            name: "SpoolshipIntegrationTests",
            dependencies: ["SpoolshipCore", "SpoolshipIO"]),
    ]
)
