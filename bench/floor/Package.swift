// swift-tools-version:6.0
// The floor under any proxy on this machine: how fast a server that only does the PostgreSQL
// md5 login, and a minimal transaction pooler, can be on SwiftNIO and on a bare epoll loop.
// Not part of Concierge; built and run by `BENCH_FLOOR=1 bench/run.sh` (bench/floor/floor.py).
// See bench/README.md, "The floor".
import PackageDescription

let package = Package(
    name: "concierge-floor",
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-crypto.git", from: "3.12.3"),
    ],
    targets: [
        .target(name: "CFloorEpoll"),
        .executableTarget(
            name: "floor",
            dependencies: [
                "CFloorEpoll",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Crypto", package: "swift-crypto"),
            ]
        ),
    ]
)
