import ArgumentParser
import ConvoyNN
import ConvoyTensor
import Foundation

/// `convoy bench train`: full AdamW training steps of a GPT on random tokens, at fp32 or bf16 compute
/// precision, against this machine's GEMM peak of that precision measured in the same run through Convoy's
/// own GEMM path; and the activation memory each block keeps for backward (under the chosen recompute).
struct BenchTrainCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "train",
        abstract: "Time GPT training steps; report tokens/s, model FLOP/s, MFU against the GEMM peak of the precision (measured in the same run) and activation memory per block.")

    @OptionGroup var shape: ModelShapeOptions
    @Option(help: "Sequences per step.") var batch: Int = 8
    @Option(help: "Compute threads.") var threads: Int = 2
    @Option(help: "Untimed warm-up steps.") var warmup: Int = 2
    @Option(help: "Timed steps.") var steps: Int = 5
    @Option(help: "Random seed.") var seed: UInt64 = 1
    @Option(help: "Compute precision: fp32, or bf16 (GEMM operands in bf16, fp32 accumulation).") var precision: String = "fp32"
    @Option(help: "Activation recompute: none, selective (attention core) or full (whole blocks).") var recompute: String = "none"
    @Flag(help: "End with one JSON line of the results.") var json = false

    func validate() throws {
        for (name, value) in [("--batch", batch), ("--threads", threads), ("--steps", steps)] where value <= 0 {
            throw ValidationError("\(name) must be positive, got \(value)")
        }
        guard warmup >= 0 else { throw ValidationError("--warmup must be ≥ 0") }
        guard ["fp32", "bf16"].contains(precision) else { throw ValidationError("--precision must be fp32 or bf16, got \(precision)") }
        guard ActivationRecompute.Granularity(rawValue: recompute) != nil else {
            throw ValidationError("--recompute must be none, selective or full, got \(recompute)")
        }
    }

    func run() throws {
        let pool = ComputePool(threadCount: threads)
        try ComputePool.withPool(pool) {
            let configuration = shape.configuration
            let model = try GPT(configuration, seed: seed)
            let optimizer = Adam.adamW(ParameterGroup.decayingMatrices(of: model, weightDecay: 0.1), learningRate: 3e-4)
            let generator = PhiloxRandom(seed: seed, stream: 99)
            let tokenCount = batch * shape.context
            func randomTokens(_ step: Int) -> [Int32] {
                (0..<tokenCount).map { Int32(generator.block(UInt64(step * tokenCount + $0)).0 % UInt32(configuration.vocabularySize)) }
            }
            let library = GEMMLibrary.active
            let bf16 = precision == "bf16"
            let computePrecision: DType = bf16 ? .bfloat16 : .float32
            let peakBefore = SgemmPeak.measure(pool: pool, bf16: bf16)
            let recomputing = ActivationRecompute(granularity: ActivationRecompute.Granularity(rawValue: recompute)!)

            var stepTimes: [Double] = []
            var lastLoss: Float = 0
            for step in 0..<(warmup + steps) {
                let inputs = randomTokens(2 * step), targets = randomTokens(2 * step + 1)
                let start = DispatchTime.now().uptimeNanoseconds
                let context = ForwardContext(training: true, seed: seed, step: step, recompute: recomputing)
                let loss = ComputePrecision.with(computePrecision) { model.loss(inputs, targets: targets, batch: batch, time: shape.context, context: context) }
                try ComputePrecision.with(computePrecision) { try loss.backward() }
                optimizer.step()
                optimizer.zeroGradients()
                lastLoss = loss.scalarValue
                let elapsed = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
                if step >= warmup { stepTimes.append(elapsed) }
            }
            // The peak is measured before and after the steps and the better kept: on a shared machine one
            // short measurement can land in a slow moment and make the MFU exceed 1.
            let peakAfter = SgemmPeak.measure(pool: pool, bf16: bf16)
            let peak = peakAfter.gflops > peakBefore.gflops ? peakAfter : peakBefore
            let meanStep = stepTimes.reduce(0, +) / Double(stepTimes.count)
            let tokensPerSecond = Double(tokenCount) / meanStep
            let flopsPerToken = configuration.trainingFLOPsPerToken
            let modelFLOPs = tokensPerSecond * flopsPerToken
            let mfu = modelFLOPs / (peak.gflops * 1e9)
            let peakRSS = ProcessMemory.peakResidentBytes()
            let blockBytes = ComputePrecision.with(computePrecision) {
                ActivationMemory.perBlock(model: model, tokens: randomTokens(0), batch: batch, time: shape.context,
                                          context: ForwardContext(training: true, seed: seed, recompute: recomputing))
            }
            let measuredPerBlock = Double(blockBytes.reduce(0, +)) / Double(max(blockBytes.count, 1))
            let megatron = ActivationMemory.megatronBytes(sequence: shape.context, batch: batch, width: shape.dModel, heads: shape.heads)
            let dropoutFree = ActivationMemory.dropoutFreeFP32Bytes(sequence: shape.context, batch: batch, width: shape.dModel, heads: shape.heads,
                                                                    tp: 1, sequenceParallel: false)

            let rows: [(String, String)] = [
                ("model", "\(shape.summary), \(configuration.parameterCount) parameters"),
                ("batch", "\(batch) × \(shape.context) = \(tokenCount) tokens, AdamW, \(threads) threads, \(precision), recompute \(recompute)"),
                ("steps", "\(warmup) warm-up + \(steps) timed; last loss \(String(format: "%.4f", lastLoss))"),
                ("step time", String(format: "%.1f ms (min %.1f, max %.1f)", meanStep * 1e3, stepTimes.min()! * 1e3, stepTimes.max()! * 1e3)),
                ("tokens/s", String(format: "%.0f", tokensPerSecond)),
                ("model FLOP/token", String(format: "%.1f M (6N + 12·L·d·T)", flopsPerToken / 1e6)),
                ("model FLOP/s", String(format: "%.1f GFLOP/s", modelFLOPs / 1e9)),
                ("GEMM library", "\(library.name) \(library.version), \(library.isa)"),
                ("bf16 GEMM kernel", bf16 ? library.bf16Kernel : "not used"),
                ("\(precision) GEMM peak", String(format: "%.1f GFLOP/s (%@, %d threads, same run)", peak.gflops, peak.shape, threads)),
                ("MFU", String(format: "%.3f", mfu)),
                ("peak RSS", String(format: "%.1f MiB", Double(peakRSS) / 1048576)),
                ("activations/block", String(format: "%.2f MiB measured (fp32 storage); Megatron s·b·h·(34+5·a·s/h) = %.2f MiB in 16-bit; its tensors at fp32 without dropout s·b·h·(64+4·a·s/h) = %.2f MiB",
                                             measuredPerBlock / 1048576, megatron / 1048576, dropoutFree / 1048576)),
            ]
            let keyWidth = rows.map(\.0.count).max()!
            for (key, value) in rows { print(key.padding(toLength: keyWidth, withPad: " ", startingAt: 0) + "  " + value) }
            if json {
                let object: [String: Any] = [
                    "tokens_per_s": tokensPerSecond, "step_ms": meanStep * 1e3, "mfu": mfu,
                    "peak_gflops": peak.gflops, "peak_rss_bytes": peakRSS,
                    "gemm_library": library.rawValue, "gemm_version": library.version, "gemm_isa": library.isa,
                    "model_gflops": modelFLOPs / 1e9, "parameters": configuration.parameterCount, "threads": threads,
                    "precision": precision, "bf16_kernel": bf16 ? library.bf16Kernel : "none", "recompute": recompute,
                    "activation_bytes_per_block": measuredPerBlock, "megatron_activation_bytes_16bit": megatron, "activation_bytes_formula_fp32_dropout_off": dropoutFree,
                ]
                let data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])
                print(String(decoding: data, as: UTF8.self))
            }
        }
    }
}
