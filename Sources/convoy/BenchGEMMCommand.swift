import ArgumentParser
import ConvoyTensor
import Foundation

/// `convoy bench gemm`: OpenBLAS fp32 vs oneDNN fp32 vs oneDNN bf16 at GPT-mini's GEMM shapes, all through
/// Convoy's own GEMM path (row blocks on a pool of `--threads`).
struct BenchGEMMCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "gemm",
        abstract: "Compare GEMM libraries and precisions at GPT-mini's shapes: GFLOP/s and ratios to OpenBLAS fp32.",
        discussion: "Each variant's best time over --repetitions; the variants take turns, so the machine's noise hits them alike.")

    @Option(help: "Compute threads.") var threads: Int = 2
    @Option(help: "Timed repetitions per shape and variant (after one untimed call).") var repetitions: Int = 10
    @Flag(help: "End with one JSON line of the results.") var json = false

    func validate() throws {
        for (name, value) in [("--threads", threads), ("--repetitions", repetitions)] where value <= 0 {
            throw ValidationError("\(name) must be positive, got \(value)")
        }
    }

    /// GPT-mini (d 384, batch 8 × 256 tokens): the attention projection forward, its weight and input
    /// gradients, the MLP's first layer, and one head's attention scores (small: per-call overhead shows).
    static let shapes: [(name: String, shape: SgemmPeak.Shape)] = [
        ("qkv forward", .init(m: 2048, n: 1152, k: 384)),
        ("qkv weight grad", .init(m: 384, n: 1152, k: 2048, transposeA: true)),
        ("qkv input grad", .init(m: 2048, n: 384, k: 1152, transposeB: true)),
        ("mlp forward", .init(m: 2048, n: 1536, k: 384)),
        ("attention scores", .init(m: 256, n: 256, k: 64, transposeB: true)),
    ]

    /// The variants compared, OpenBLAS fp32 first (the baseline of the ratios).
    static let variants: [(key: String, title: String, library: GEMMLibrary, bf16: Bool)] = [
        ("openblas_fp32", "OpenBLAS fp32", .openBLAS, false),
        ("onednn_fp32", "oneDNN fp32", .oneDNN, false),
        ("onednn_bf16", "oneDNN bf16", .oneDNN, true),
    ]

    func run() throws {
        let pool = ComputePool(threadCount: threads)
        var rows: [[String: Any]] = []
        print("threads \(threads); OpenBLAS \(GEMMLibrary.openBLAS.version) (\(GEMMLibrary.openBLAS.isa)); oneDNN \(GEMMLibrary.oneDNN.version) (\(GEMMLibrary.oneDNN.isa), bf16 kernel \(GEMMLibrary.oneDNN.bf16Kernel))")
        let header = ["shape", "M×N×K"] + Self.variants.map { "\($0.title) GFLOP/s" } + ["fp32 ×", "bf16 ×"]
        var table: [[String]] = [header]
        for (name, shape) in Self.shapes {
            let operands = SgemmPeak.Operands(shape)
            var best = [Double](repeating: .infinity, count: Self.variants.count)
            for variant in Self.variants { _ = operands.time(library: variant.library, bf16: variant.bf16, pool: pool) }
            for _ in 0..<repetitions {
                for (index, variant) in Self.variants.enumerated() {
                    best[index] = min(best[index], operands.time(library: variant.library, bf16: variant.bf16, pool: pool))
                }
            }
            let gflops = best.map { operands.gflops(seconds: $0) }
            table.append([name, shape.description] + gflops.map { String(format: "%.1f", $0) }
                         + [String(format: "%.2f", gflops[1] / gflops[0]), String(format: "%.2f", gflops[2] / gflops[0])])
            var row: [String: Any] = ["name": name, "m": shape.m, "n": shape.n, "k": shape.k,
                                      "transpose_a": shape.transposeA, "transpose_b": shape.transposeB]
            for (variant, value) in zip(Self.variants, gflops) { row["\(variant.key)_gflops"] = value }
            rows.append(row)
        }
        let widths = header.indices.map { column in table.map { $0[column].count }.max()! }
        for line in table {
            print(zip(line, widths).map { $0.0.padding(toLength: $0.1, withPad: " ", startingAt: 0) }.joined(separator: "  "))
        }
        if json {
            let object: [String: Any] = [
                "threads": threads, "repetitions": repetitions, "shapes": rows,
                "openblas_version": GEMMLibrary.openBLAS.version, "openblas_core": GEMMLibrary.openBLAS.isa,
                "onednn_version": GEMMLibrary.oneDNN.version, "onednn_isa": GEMMLibrary.oneDNN.isa,
                "onednn_bf16_kernel": GEMMLibrary.oneDNN.bf16Kernel,
            ]
            let data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])
            print(String(decoding: data, as: UTF8.self))
        }
    }
}
