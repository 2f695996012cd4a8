// swift-tools-version: 6.2
import PackageDescription

// Sluice is Linux-only (XDP, BPF, network namespaces; the code imports Glibc), so no
// other platform is declared.
let package = Package(
    name: "Sluice",
    products: [
        .executable(name: "lbctl", targets: ["lbctl"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.2.2"),
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        // Already under Hummingbird; named for the health checks' TCP, HTTP and UDP probes.
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.81.0"),
        // Already under Hummingbird: the sync protocol's HMAC-SHA256 (Crypto) and TCP framing (NIOExtras).
        .package(url: "https://github.com/apple/swift-crypto.git", "3.12.3"..<"5.0.0"),
        .package(url: "https://github.com/apple/swift-nio-extras.git", from: "1.35.2"),
        // lbctl apply --server: an HTTP client that takes a custom CA (--cacert), which
        // URLSession on Linux cannot. Already in the graph through Hummingbird.
        .package(url: "https://github.com/swift-server/async-http-client", from: "1.30.0"),
        .package(url: "https://github.com/apple/swift-nio-ssl", from: "2.37.2"),
    ],
    targets: [
        // libbpf, through pkg-config; shim.h covers what its macros hide from Swift.
        .systemLibrary(name: "CLibbpf", pkgConfig: "libbpf", providers: [.apt(["libbpf-dev"])]),
        // The kernel/user header from bpf/ (symlinked) and the embedded BPF objects
        // (objects.c includes generated_objects.inc, which make bpf writes).
        .target(name: "CSluice"),
        // Pure Swift: config, validation, Maglev, the flow-hash model, diffs. No kernel.
        .target(name: "SluiceCore", dependencies: [.product(name: "Yams", package: "Yams")]),
        // A thin typed wrapper over libbpf.
        .target(name: "SluiceBPF", dependencies: ["CLibbpf"]),
        // The data plane as lbctl and the agent drive it: attach, apply, read state.
        .target(name: "SluiceControl", dependencies: ["SluiceCore", "SluiceBPF", "CSluice", "CLibbpf"]),
        // lbctl agent: the HTTP control API and /metrics over the pinned data plane (Hummingbird 2).
        .target(name: "SluiceAgent", dependencies: [
            "SluiceControl", "SluiceCore",
            .product(name: "Hummingbird", package: "hummingbird"),
            .product(name: "HummingbirdTLS", package: "hummingbird"),
            .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            .product(name: "UnixSignals", package: "swift-service-lifecycle"),
            .product(name: "Logging", package: "swift-log"),
            .product(name: "Yams", package: "Yams"),
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "NIOExtras", package: "swift-nio-extras"),
            .product(name: "Crypto", package: "swift-crypto"),
        ]),
        .executableTarget(name: "lbctl", dependencies: [
            "SluiceControl", "SluiceCore", "SluiceAgent",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
            .product(name: "AsyncHTTPClient", package: "async-http-client"),
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOSSL", package: "swift-nio-ssl"),
            .product(name: "NIOHTTP1", package: "swift-nio"),
        ]),
        // make bench: per-packet cost against floors, forwarding rate, control-plane times, memory.
        .executableTarget(name: "sluice-bench", dependencies: [
            "SluiceAgent", "SluiceControl", "SluiceCore", "SluiceBPF", "CSluice", "CLibbpf", "SluiceTestSupport",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
            .product(name: "Crypto", package: "swift-crypto"),  // the sync frames' key, for their figures
        ], path: "Benchmarks/SluiceBench"),
        .target(name: "SluiceTestSupport", dependencies: ["SluiceCore", "SluiceBPF", "SluiceControl", "CSluice", "CLibbpf"],
                path: "Tests/SluiceTestSupport"),
        .testTarget(name: "SluiceCoreTests", dependencies: ["SluiceCore"]),
        .testTarget(name: "SluiceDataplaneTests", dependencies: ["SluiceControl", "SluiceTestSupport", "SluiceCore", "SluiceBPF", "CSluice"]),
        .testTarget(name: "LbctlTests", dependencies: ["SluiceTestSupport", "SluiceCore", "SluiceControl"]),
        // The agent: its configuration, metrics text, health probes, sync frames, and lbctl agent as a process.
        .testTarget(name: "SluiceAgentTests", dependencies: ["SluiceTestSupport", "SluiceCore", "SluiceAgent", "SluiceControl",
                                                           .product(name: "Crypto", package: "swift-crypto"),
                                                           .product(name: "Yams", package: "Yams")]),  // docs/openapi.yaml
        // End to end through scripts/lab.sh: namespaces, real TCP/UDP servers, DSR.
        .testTarget(name: "LabTests", dependencies: ["SluiceTestSupport"]),
    ]
)
