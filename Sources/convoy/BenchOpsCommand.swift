import ArgumentParser
import ConvoyNN
import ConvoyTensor
import Foundation

/// `convoy bench ops`: the per-operation profile of one GPT block's training step (forward and backward of
/// each kernel at the model's shapes), to see where a step's time goes and what fusing would save. The fused
/// kernels training uses are timed beside the operations they replace, and one block is totalled both ways.
struct BenchOpsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ops",
        abstract: "Time each operation of a GPT block (forward and backward) at the model's shapes: the per-op profile.")

    @OptionGroup var shape: ModelShapeOptions
    @Option(help: "Sequences per step.") var batch: Int = 8
    @Option(help: "Compute threads.") var threads: Int = 2
    @Option(help: "Timed repetitions (the median is reported).") var repetitions: Int = 5
    @Option(help: "Compute precision: fp32 or bf16.") var precision: String = "fp32"
    @Flag(help: "End with one JSON line of the results.") var json = false

    func validate() throws {
        for (name, value) in [("--batch", batch), ("--threads", threads), ("--repetitions", repetitions)] where value <= 0 {
            throw ValidationError("\(name) must be positive, got \(value)")
        }
        guard ["fp32", "bf16"].contains(precision) else { throw ValidationError("--precision must be fp32 or bf16, got \(precision)") }
    }

    /// One operation to time: builds its inputs (requiring gradients) and runs its forward.
    struct Operation {
        var name: String
        var inputShapes: [[Int]]
        /// How many times a GPT block runs it: with the fused kernels (as training does), and without them.
        var perFusedBlock = 0, perUnfusedBlock = 0
        var forward: ([Tensor]) -> Tensor
    }

    func run() throws {
        let pool = ComputePool(threadCount: threads)
        let b = batch, t = shape.context, d = shape.dModel, heads = shape.heads
        let rows = [b, t]
        func weight(_ shape: [Int], _ seed: UInt64) -> Tensor { Tensor.randomNormal(shape, std: 0.02, seed: seed) }
        let qkvWeight = weight([d, 3 * d], 1), projectionWeight = weight([d, d], 2), fcWeight = weight([d, 4 * d], 3)
        let mlpProjectionWeight = weight([4 * d, d], 4), headWeight = weight([256, d], 5)
        let qkvBias = Tensor.zeros([3 * d]), widthBias = Tensor.zeros([d]), fcBias = Tensor.zeros([4 * d])
        let lnWeight = Tensor.full([d], value: 1), lnBias = Tensor.zeros([d])
        let targets = (0..<(b * t)).map { Int32($0 % 256) }
        let operations: [Operation] = [
            Operation(name: "layer norm", inputShapes: [rows + [d]], perFusedBlock: 1, perUnfusedBlock: 2) { Tensor.layerNorm($0[0], weight: lnWeight, bias: lnBias) },
            Operation(name: "c_attn linear d→3d", inputShapes: [rows + [d]], perFusedBlock: 1, perUnfusedBlock: 1) { Tensor.linear($0[0], weight: qkvWeight, bias: qkvBias) },
            Operation(name: "attention, full T² (before)", inputShapes: [rows + [3 * d]]) { Tensor.causalSelfAttention(qkv: $0[0], heads: heads, rowBlock: t) },
            Operation(name: "attention, causal blocks of 64", inputShapes: [rows + [3 * d]], perFusedBlock: 1, perUnfusedBlock: 1) { Tensor.causalSelfAttention(qkv: $0[0], heads: heads) },
            Operation(name: "attention, causal + selective recompute", inputShapes: [rows + [3 * d]]) { Tensor.causalSelfAttention(qkv: $0[0], heads: heads, recompute: true) },
            Operation(name: "attn c_proj linear d→d", inputShapes: [rows + [d]], perFusedBlock: 1, perUnfusedBlock: 1) { Tensor.linear($0[0], weight: projectionWeight, bias: widthBias) },
            Operation(name: "residual add", inputShapes: [rows + [d], rows + [d]], perFusedBlock: 1, perUnfusedBlock: 2) { $0[0] + $0[1] },
            Operation(name: "residual add + layer norm, fused", inputShapes: [rows + [d], rows + [d]], perFusedBlock: 1) {
                Tensor.residualLayerNorm($0[0], $0[1], weight: lnWeight, bias: lnBias).normalized
            },
            Operation(name: "c_fc linear d→4d", inputShapes: [rows + [d]], perUnfusedBlock: 1) { Tensor.linear($0[0], weight: fcWeight, bias: fcBias) },
            Operation(name: "c_fc linear d→4d, bias left to GELU", inputShapes: [rows + [d]], perFusedBlock: 1) { Tensor.linear($0[0], weight: fcWeight, bias: nil) },
            Operation(name: "GELU", inputShapes: [rows + [4 * d]], perUnfusedBlock: 1) { $0[0].gelu() },
            Operation(name: "bias + GELU, unfused", inputShapes: [rows + [4 * d], [4 * d]]) { ($0[0] + $0[1]).gelu() },
            Operation(name: "bias + GELU, fused", inputShapes: [rows + [4 * d], [4 * d]], perFusedBlock: 1) { Tensor.biasGELU($0[0], bias: $0[1]) },
            Operation(name: "mlp c_proj linear 4d→d", inputShapes: [rows + [4 * d]], perFusedBlock: 1, perUnfusedBlock: 1) { Tensor.linear($0[0], weight: mlpProjectionWeight, bias: widthBias) },
            Operation(name: "LM head (per model)", inputShapes: [rows + [d]]) { $0[0].matmul(headWeight.transposed()) },
            Operation(name: "cross-entropy (per model)", inputShapes: [rows + [256]]) { Tensor.crossEntropy(logits: $0[0].reshaped([-1, 256]), targets: targets) },
        ]
        let computePrecision: DType = precision == "bf16" ? .bfloat16 : .float32
        var results: [(operation: Operation, forward: Double, backward: Double)] = []
        try ComputePool.withPool(pool) {
            try ComputePrecision.with(computePrecision) {
                for operation in operations {
                    var forwardTimes: [Double] = [], backwardTimes: [Double] = []
                    for repetition in 0...repetitions {
                        let inputs = operation.inputShapes.enumerated().map { Tensor.randomUniform($1, low: -1, high: 1, seed: UInt64(10 + $0), requiresGrad: true) }
                        var start = DispatchTime.now().uptimeNanoseconds
                        let output = operation.forward(inputs)
                        let forward = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
                        let gradient = Tensor.randomUniform(output.shape, low: -1, high: 1, seed: 99)
                        start = DispatchTime.now().uptimeNanoseconds
                        try output.backward(outputGradient: gradient)
                        let backward = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
                        // The first run warms the allocator's cache and the library's kernels.
                        if repetition > 0 { forwardTimes.append(forward); backwardTimes.append(backward) }
                    }
                    results.append((operation, median(forwardTimes), median(backwardTimes)))
                }
            }
        }
        func blockTime(_ count: (Operation) -> Int) -> Double { results.reduce(0) { $0 + Double(count($1.operation)) * ($1.forward + $1.backward) } }
        let fusedBlock = blockTime(\.perFusedBlock), unfusedBlock = blockTime(\.perUnfusedBlock)
        print("\(shape.summary), batch \(b), \(threads) threads, \(precision), \(GEMMLibrary.active.name); median of \(repetitions)")
        print("operation".padding(toLength: 42, withPad: " ", startingAt: 0) + "  forward ms  backward ms")
        for result in results {
            print(result.operation.name.padding(toLength: 42, withPad: " ", startingAt: 0) + String(format: "  %10.2f  %11.2f", result.forward * 1e3, result.backward * 1e3))
        }
        print(String(format: "one block, causal attention, as trained (fused residual + layer norm, fused bias + GELU): %.1f ms", fusedBlock * 1e3))
        print(String(format: "one block, causal attention, unfused (2 layer norms, 2 residual adds, GELU): %.1f ms", unfusedBlock * 1e3))
        if json {
            let object: [String: Any] = [
                "precision": precision, "gemm_library": GEMMLibrary.active.rawValue, "threads": threads,
                "block_ms": fusedBlock * 1e3, "unfused_block_ms": unfusedBlock * 1e3,
                "operations": results.map { ["name": $0.operation.name, "forward_ms": $0.forward * 1e3, "backward_ms": $0.backward * 1e3] },
            ]
            print(String(decoding: try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]), as: UTF8.self))
        }
    }

    private func median(_ values: [Double]) -> Double { values.sorted()[values.count / 2] }
}
