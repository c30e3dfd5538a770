// swift-tools-version:6.0
import PackageDescription

/// `CONCIERGE_FUZZ=1` (scripts/fuzz.sh) adds the libFuzzer executable, built with
/// `-sanitize=fuzzer`; a normal `swift build` never builds it.
let fuzzBuild = Context.environment["CONCIERGE_FUZZ"] == "1"

let package = Package(
    name: "concierge",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "concierge", targets: ["concierge"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-crypto.git", from: "3.12.3"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/jpsim/Yams.git", from: "5.0.1"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.37.6"),
        .package(url: "https://github.com/apple/swift-collections.git", from: "1.6.0"),
    ],
    targets: [
        // The system CSPRNG, pooled (salts, nonces, scrambles and cancel keys on every login).
        .target(name: "ConciergeRandom"),
        .target(
            name: "PostgresWire",
            dependencies: [
                "ConciergeRandom",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "_CryptoExtras", package: "swift-crypto"),
            ]
        ),
        .target(name: "SQLClassifier"),
        // The MySQL/MariaDB client/server protocol: packets and their framing, the handshake,
        // authentication (native, caching_sha2, RSA, clear), OK/ERR/EOF, and the tracker that
        // tells where a command's response ends. Pure: no channels, no event loops.
        .target(
            name: "MySQLWire",
            dependencies: [
                "ConciergeRandom",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "_CryptoExtras", package: "swift-crypto"),
            ]
        ),
        .target(name: "ConciergeJSON"),
        .target(
            name: "ConciergeAWS",
            dependencies: [
                "ConciergeJSON",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
            ]
        ),
        .target(name: "ConnectionPool"),
        // The engine-neutral core: what every engine family shares (target group and its health
        // checks, proxy errors, session registry), and `DatabaseEngine`, the protocol an engine
        // implements. It names no database protocol.
        .target(
            name: "ProxyCore",
            dependencies: [
                "ConnectionPool",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                // Only for `BackendLogin.tls`: every engine's backends speak TLS the same way.
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
            ]
        ),
        // Client authentication policy, IAM tokens and the users' keys, for every engine.
        .target(
            name: "ConciergeAuth",
            dependencies: [
                "ProxyCore", "ConciergeConfig", "ConciergeAWS",
                .product(name: "Crypto", package: "swift-crypto"),
            ]
        ),
        // The admin HTTP API and /metrics, over any engine's proxies (`AdminManagedProxy`).
        .target(
            name: "ConciergeAdmin",
            dependencies: [
                "ProxyCore", "ConciergeConfig", "ConciergeJSON",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ]
        ),
        // The PostgreSQL engine's pure session machines (no sockets, no event loops).
        .target(
            name: "PostgresProxy",
            dependencies: [
                "ConciergeRandom", "ProxyCore", "ConciergeAuth", "ConnectionPool", "PostgresWire", "SQLClassifier",
                // Deque: the held messages and the responses owed are queues popped at the front,
                // per message (an Array's removeFirst moves every element after it).
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "NIOCore", package: "swift-nio"),
            ]
        ),
        // The MySQL engine's pure session machines (no sockets, no event loops).
        .target(
            name: "MySQLProxy",
            dependencies: [
                "ConciergeRandom", "ProxyCore", "ConciergeAuth", "ConnectionPool", "MySQLWire", "SQLClassifier",
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "NIOCore", package: "swift-nio"),
            ]
        ),
        .target(
            name: "ConciergeConfig",
            dependencies: [
                "ConciergeJSON",
                .product(name: "Yams", package: "Yams"),
            ]
        ),
        // The NIO runtime every engine runs on, generic over the engine (`ProxyRuntime<Engine>`):
        // listeners, accepting and draining, backends opened through the engine, target health,
        // failover waits, paced opens, reader pools, reload, admin. It names no database protocol.
        .target(
            name: "ConciergeRuntime",
            dependencies: [
                "ConciergeRandom", "ConnectionPool", "ConciergeConfig", "ConciergeJSON", "ProxyCore", "ConciergeAdmin", "ConciergeAuth",
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ]
        ),
        // The PostgreSQL engine on that runtime: its NIO handlers (the client session, the backend
        // connection), which run PostgresProxy's machines' actions, and `PostgresEngine`.
        .target(
            name: "PostgresServer",
            dependencies: [
                "ConciergeRandom", "ConciergeRuntime", "PostgresWire", "SQLClassifier", "ConnectionPool", "ConciergeConfig",
                "ProxyCore", "PostgresProxy", "ConciergeAuth",
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ]
        ),
        // The MySQL/MariaDB engine on the same runtime: its NIO handlers and `MySQLEngine`.
        .target(
            name: "MySQLServer",
            dependencies: [
                "ConciergeRandom", "ConciergeRuntime", "MySQLWire", "MySQLProxy", "SQLClassifier", "ConnectionPool",
                "ConciergeConfig", "ProxyCore", "ConciergeAuth",
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ]
        ),
        // The composition root: the server that runs each configured proxy on its engine, secret
        // rotation, reload, the admin listener, structured logs.
        .target(
            name: "ConciergeServer",
            dependencies: [
                "ConciergeRuntime", "PostgresServer", "MySQLServer",
                "PostgresWire", "SQLClassifier", "ConnectionPool", "ConciergeConfig", "ConciergeAWS", "ConciergeJSON",
                "ProxyCore", "PostgresProxy", "ConciergeAdmin", "ConciergeAuth",
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ]
        ),
        .executableTarget(
            name: "concierge",
            dependencies: [
                "ConciergeServer", "ConciergeConfig", "ConciergeAWS", "ConciergeJSON",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
            ]
        ),
        .testTarget(
            name: "PostgresWireTests",
            dependencies: ["PostgresWire", "ConciergeRandom", .product(name: "NIOTestUtils", package: "swift-nio"), .product(name: "NIOCore", package: "swift-nio")]
        ),
        .testTarget(name: "SQLClassifierTests", dependencies: ["SQLClassifier"]),
        .testTarget(
            name: "MySQLWireTests",
            dependencies: ["MySQLWire", "ConciergeRandom", .product(name: "NIOCore", package: "swift-nio")],
            resources: [.copy("Captures")]
        ),
        .testTarget(
            name: "MySQLProxyTests",
            dependencies: [
                "MySQLProxy", "MySQLWire", "ProxyCore", "ConciergeAuth", "ConciergeConfig", "ConnectionPool", "SQLClassifier",
                .product(name: "NIOCore", package: "swift-nio"),
            ]
        ),
        .testTarget(name: "ConciergeRandomTests", dependencies: ["ConciergeRandom"]),
        .testTarget(name: "ConciergeJSONTests", dependencies: ["ConciergeJSON"]),
        .testTarget(
            name: "ConciergeAWSTests",
            dependencies: [
                "ConciergeAWS", "ConciergeJSON",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
            ]
        ),
        .testTarget(name: "ConnectionPoolTests", dependencies: ["ConnectionPool"]),
        .testTarget(
            name: "ProxyCoreTests",
            dependencies: [
                "ProxyCore", "ConnectionPool",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ]
        ),
        .testTarget(name: "ConciergeAuthTests", dependencies: ["ConciergeAuth", "ProxyCore", "ConciergeConfig"]),
        .testTarget(
            name: "PostgresProxyTests",
            dependencies: [
                "PostgresProxy", "ProxyCore", "ConciergeAuth", "ConciergeConfig", "ConnectionPool", "PostgresWire",
                .product(name: "NIOCore", package: "swift-nio"),
            ]
        ),
        .testTarget(name: "ConciergeConfigTests", dependencies: ["ConciergeConfig"]),
        // The fuzz targets (Fuzz/README in README.md "Fuzzing"): plain functions over bytes, used by the
        // libFuzzer executable below and by FuzzRegressionTests (which replays Fuzz/regressions and
        // Fuzz/corpus without libFuzzer). The admin HTTP target needs ConciergeServer's internals:
        // compiled in where the module is built for testing (debug builds, and the fuzz build,
        // which passes -enable-testing).
        .target(
            name: "ConciergeFuzzTargets",
            dependencies: [
                "PostgresWire", "SQLClassifier", "ConciergeJSON", "ConciergeConfig", "ConciergeAWS", "ConciergeServer",
                "ConciergeRuntime", "PostgresServer", "ConciergeAdmin",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Fuzz/Targets",
            swiftSettings: [
                .define("CONCIERGE_FUZZ_TESTABLE", .when(configuration: .debug)),
            ] + (fuzzBuild ? [.define("CONCIERGE_FUZZ_TESTABLE")] : [])
        ),
        .testTarget(name: "FuzzRegressionTests", dependencies: ["ConciergeFuzzTargets"]),
        .testTarget(
            name: "ConciergeServerTests",
            dependencies: [
                "ConciergeServer", "ConciergeRuntime", "PostgresServer", "MySQLServer", "ConciergeJSON", "ProxyCore", "ConnectionPool",
                "PostgresWire", "ConciergeAdmin", "PostgresProxy",
                .product(name: "NIOEmbedded", package: "swift-nio"), .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ]
        ),
    ]
)

if fuzzBuild {
    package.targets += [
        .target(name: "CLibFuzzer", path: "Fuzz/CLibFuzzer"),
        .executableTarget(name: "ConciergeFuzz", dependencies: ["ConciergeFuzzTargets", "CLibFuzzer"], path: "Fuzz/ConciergeFuzz"),
    ]
}
