// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "compass",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "compass", targets: ["compass"]),
        .executable(name: "compass-broker", targets: ["compass-broker"]),
        .executable(name: "compass-worker", targets: ["compass-worker"]),
        .library(name: "CompassClient", targets: ["CompassClient"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        .package(url: "https://github.com/apple/swift-collections", from: "1.1.0"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.0.0"),
        .package(url: "https://github.com/groue/GRDB.swift", from: "7.0.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.0.0"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.4.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.0.0"),
    ],
    targets: [
        // libzmq from the system (Debian: libzmq3-dev). Only the ZMQ target imports it.
        .systemLibrary(
            name: "CLibZMQ",
            pkgConfig: "libzmq",
            providers: [.apt(["libzmq3-dev"])]
        ),
        // A small safe wrapper over libzmq: context, socket, frame, poller, options, CURVE keys.
        .target(name: "ZMQ", dependencies: ["CLibZMQ"]),
        // POSIX helpers: spawn, signals, pipes, eventfd, clocks, file locks.
        .target(name: "CCompassShims", linkerSettings: [.linkedLibrary("dl"), .linkedLibrary("pthread")]),
        .target(name: "CompassSystem", dependencies: ["CCompassShims"]),
        // CURVE key files, allowlists, and the broker's ZAP handler.
        .target(name: "CompassSecurity", dependencies: ["ZMQ"]),
        // The protocol's constants, codes and JSON payload types (pure, no I/O).
        .target(name: "CompassProtocol"),
        // The protocol's messages as ZeroMQ frames.
        .target(name: "CompassWire", dependencies: ["CompassProtocol", "ZMQ"]),
        // The broker's scheduling core: a pure state machine with an injected clock.
        .target(name: "CompassScheduler", dependencies: [
            "CompassProtocol",
            .product(name: "DequeModule", package: "swift-collections"),
            .product(name: "HeapModule", package: "swift-collections"),
        ], swiftSettings: [
            // The scheduler is generic over the payload and runs in the broker's module: let the
            // optimizer specialize it there (without this, every call instantiates generic metadata).
            // Serialize every function, not only those the optimizer picks: it left SUBMIT's
            // transition (and dispatch under it) unserialized, so the broker ran them unspecialized,
            // through value witnesses and generic metadata, on every batch (README, "A ceiling for the broker").
            // This needs no `private` declaration in the module (PoolQueue says why).
            .unsafeFlags(["-cross-module-optimization", "-Xllvm", "-sil-cross-module-serialize-all"], .when(configuration: .release)),
        ]),
        // The broker's durable journal (SQLite in WAL mode through GRDB).
        .target(name: "CompassJournal", dependencies: [
            "CompassScheduler", "CompassProtocol",
            .product(name: "GRDB", package: "GRDB.swift"),
        ]),
        // The broker's socket loop around the scheduler.
        .target(name: "CompassBroker", dependencies: [
            "CompassScheduler", "CompassJournal", "CompassProtocol", "CompassSecurity", "CompassWire", "CompassSystem", "ZMQ",
            .product(name: "Logging", package: "swift-log"),
            .product(name: "Metrics", package: "swift-metrics"),
        ]),
        // Inference engines a worker hosts: synthetic (in-process) and external processes.
        .target(name: "CompassEngines", dependencies: [
            "CompassProtocol", "CompassSystem",
            .product(name: "DequeModule", package: "swift-collections"),
            .product(name: "Logging", package: "swift-log"),
        ]),
        // The worker: its decisions as a pure state machine (registration, credit, admission into
        // the engine, engine supervision), the socket loop around it, GPU claims (NVML through CCompassShims).
        .target(name: "CompassWorker", dependencies: [
            "CCompassShims", "CompassEngines", "CompassProtocol", "CompassSecurity", "CompassWire", "CompassSystem", "ZMQ",
            .product(name: "DequeModule", package: "swift-collections"),
            .product(name: "Logging", package: "swift-log"),
        ]),
        // The producer library: submit batches, get every result exactly once (async API).
        .target(name: "CompassClient", dependencies: [
            "CompassProtocol", "CompassSecurity", "CompassWire", "CompassSystem", "ZMQ",
            .product(name: "DequeModule", package: "swift-collections"),
            .product(name: "Logging", package: "swift-log"),
        ]),
        // topology.yaml: parsing and validation with line numbers.
        .target(name: "CompassTopology", dependencies: ["CompassProtocol", "Yams"]),
        // The OpenAI-compatible HTTP gateway in front of the broker (Hummingbird).
        .target(name: "CompassGateway", dependencies: [
            "CompassClient", "CompassProtocol",
            .product(name: "Hummingbird", package: "hummingbird"),
            .product(name: "Logging", package: "swift-log"),
        ]),
        // `compass up`: runs a topology's processes and keeps them running.
        .target(name: "CompassLauncher", dependencies: [
            "CompassTopology", "CompassSystem",
            .product(name: "Logging", package: "swift-log"),
        ]),
        // The command-line commands of all three executables.
        .target(name: "CompassCommands", dependencies: [
            "CompassBroker", "CompassJournal", "CompassSecurity", "CompassWorker", "CompassClient", "CompassGateway", "CompassTopology", "CompassLauncher", "CompassSystem",
            "CompassEngines", "CompassProtocol", "CompassScheduler", "ZMQ",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
            .product(name: "Logging", package: "swift-log"),
            .product(name: "Metrics", package: "swift-metrics"),
            .product(name: "Prometheus", package: "swift-prometheus"),
            .product(name: "Hummingbird", package: "hummingbird"),
            .product(name: "DequeModule", package: "swift-collections"),
        ]),
        .executableTarget(name: "compass", dependencies: ["CompassCommands"]),
        .executableTarget(name: "compass-broker", dependencies: ["CompassCommands"]),
        .executableTarget(name: "compass-worker", dependencies: ["CompassCommands"]),

        .testTarget(name: "ZMQTests", dependencies: ["ZMQ"]),
        .testTarget(name: "CompassProtocolTests", dependencies: ["CompassProtocol", "CompassWire", "ZMQ"]),
        .testTarget(name: "CompassSchedulerTests", dependencies: ["CompassScheduler", "CompassProtocol"]),
        .testTarget(name: "CompassEnginesTests", dependencies: [
            "CompassEngines", "CompassProtocol", "CompassSystem", .product(name: "Logging", package: "swift-log"),
        ]),
        .testTarget(name: "CompassWorkerTests", dependencies: [
            "CompassWorker", "CompassEngines", "CompassProtocol",
            .product(name: "DequeModule", package: "swift-collections"),
        ]),
        .testTarget(name: "CompassClientTests", dependencies: ["CompassClient", "CompassProtocol"]),
        .testTarget(name: "CompassTopologyTests", dependencies: ["CompassTopology", "CompassLauncher", "CompassSystem", "Yams"]),
        .testTarget(name: "CompassJournalTests", dependencies: ["CompassJournal", "CompassScheduler", "CompassProtocol"]),
        .testTarget(name: "CompassGatewayTests", dependencies: ["CompassGateway", "CompassProtocol", "CompassTopology", "CompassLauncher"]),
        // Black-box tests: they start the built compass-broker, compass-worker and compass processes.
        .testTarget(name: "IntegrationTests", dependencies: [
            "CompassClient", "CompassBroker", "CompassSecurity", "CompassWire", "CompassProtocol", "CompassSystem", "ZMQ",
            "CompassScheduler",
        ]),
    ]
)
