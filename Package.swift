// swift-tools-version: 6.0
import PackageDescription

// Layers (DESIGN.md §2): each target depends only on the layers above it.
let package = Package(
    name: "Convoy",
    products: [
        .executable(name: "convoy", targets: ["convoy"]),
        .library(name: "ConvoyTensor", targets: ["ConvoyTensor"]),
        .library(name: "ConvoyNN", targets: ["ConvoyNN"]),
        .library(name: "ConvoyComm", targets: ["ConvoyComm"]),
        .library(name: "ConvoyParallel", targets: ["ConvoyParallel"]),
        .library(name: "ConvoyTrain", targets: ["ConvoyTrain"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/LebJe/TOMLKit", from: "0.6.0"),
    ],
    targets: [
        .systemLibrary(
            name: "COpenBLAS",
            pkgConfig: "openblas",
            providers: [.apt(["libopenblas-dev"])]
        ),
        // oneDNN, the default GEMM library: Debian's libdnnl-dev ships no pkg-config file, so the module map
        // links it by name.
        .systemLibrary(
            name: "COneDNN",
            providers: [.apt(["libdnnl-dev"])]
        ),
        .systemLibrary(
            name: "CMPI",
            pkgConfig: "ompi-c",
            providers: [.apt(["libopenmpi-dev", "openmpi-bin"])]
        ),
        .target(
            name: "ConvoyTensor",
            dependencies: ["COpenBLAS", "COneDNN"]
        ),
        .target(
            name: "ConvoyNN",
            dependencies: ["ConvoyTensor"]
        ),
        .target(
            name: "ConvoyComm",
            dependencies: ["ConvoyTensor", "CMPI"]
        ),
        .target(
            name: "ConvoyParallel",
            dependencies: ["ConvoyComm", "ConvoyNN", "ConvoyTensor"]
        ),
        .target(
            name: "ConvoyTrain",
            dependencies: ["ConvoyParallel", "ConvoyComm", "ConvoyNN", "ConvoyTensor", .product(name: "TOMLKit", package: "TOMLKit")]
        ),
        .executableTarget(
            name: "convoy",
            dependencies: [
                "ConvoyTrain", "ConvoyComm", "ConvoyNN", "ConvoyTensor", "CMPI",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        // Run under mpirun (scripts/test): MPI_Init may run once per process, so MPI tests are an executable.
        .executableTarget(name: "ConvoyMPITests", dependencies: ["ConvoyTrain", "ConvoyParallel", "ConvoyComm", "ConvoyNN", "ConvoyTensor"], path: "Tests/ConvoyMPITests"),
        .testTarget(name: "ConvoyTensorTests", dependencies: ["ConvoyTensor"]),
        .testTarget(
            name: "ConvoyNNTests",
            dependencies: ["ConvoyNN", "ConvoyTensor"],
            resources: [.copy("Fixtures")]
        ),
        .testTarget(name: "ConvoyCommTests", dependencies: ["ConvoyComm", "ConvoyTensor"]),
        .testTarget(name: "ConvoyParallelTests", dependencies: ["ConvoyParallel", "ConvoyComm", "ConvoyNN", "ConvoyTensor"]),
        .testTarget(
            name: "ConvoyTrainTests",
            dependencies: ["ConvoyTrain", "ConvoyParallel", "ConvoyNN", "ConvoyTensor"],
            resources: [.copy("Fixtures")]
        ),
    ]
)
