// swift-tools-version:6.0
// The benchmark tool, kept out of the main package so that its dependencies (HdrHistogram) stay out
// of compass's own dependency graph. `bench/run` builds it in release mode.
import Foundation
import PackageDescription

// A path dependency's identity is its directory's name (`main`, `wt-bench`, a CI clone's name...).
let mainPackage = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
let mainIdentity = mainPackage.lastPathComponent.lowercased()

let package = Package(
    name: "compass-bench",
    platforms: [.macOS(.v15)],
    dependencies: [
        .package(path: ".."),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift", exact: "0.2.0"),
    ],
    targets: [
        // libzmq again, under a name of its own: the bench talks ZeroMQ and the compass protocol with
        // its own small code (the main package's ZMQ and CompassWire modules are not products).
        .systemLibrary(name: "CBenchZMQ", pkgConfig: "libzmq", providers: [.apt(["libzmq3-dev"])]),
        .executableTarget(
            name: "compass-bench",
            dependencies: [
                "CBenchZMQ",
                .product(name: "CompassClient", package: mainIdentity),
                .product(name: "Histogram", package: "hdrhistogram-swift"),
            ],
            swiftSettings: [.swiftLanguageMode(.v5)]),
    ]
)
