import ArgumentParser
import ConvoyNN
import ConvoyTensor
import Foundation

/// `convoy bench train`: full AdamW training steps of a GPT on random tokens, against this machine's fp32
/// GEMM peak measured in the same run through the same GEMM library.
struct BenchTrainCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "train",
        abstract: "Time GPT training steps; report tokens/s, model FLOP/s and MFU against the fp32 GEMM peak measured in the same run.")

    @OptionGroup var shape: ModelShapeOptions
    @Option(help: "Sequences per step.") var batch: Int = 8
    @Option(help: "Compute threads.") var threads: Int = 2
    @Option(help: "Untimed warm-up steps.") var warmup: Int = 2
    @Option(help: "Timed steps.") var steps: Int = 5
    @Option(help: "Random seed.") var seed: UInt64 = 1
    @Flag(help: "End with one JSON line of the results.") var json = false

    func validate() throws {
        for (name, value) in [("--batch", batch), ("--threads", threads), ("--steps", steps)] where value <= 0 {
            throw ValidationError("\(name) must be positive, got \(value)")
        }
        guard warmup >= 0 else { throw ValidationError("--warmup must be ≥ 0") }
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
            let peak = SgemmPeak.measure(pool: pool)

            var stepTimes: [Double] = []
            var lastLoss: Float = 0
            for step in 0..<(warmup + steps) {
                let inputs = randomTokens(2 * step), targets = randomTokens(2 * step + 1)
                let start = DispatchTime.now().uptimeNanoseconds
                let loss = model.loss(inputs, targets: targets, batch: batch, time: shape.context, context: ForwardContext(training: true, seed: seed, step: step))
                try loss.backward()
                optimizer.step()
                optimizer.zeroGradients()
                lastLoss = loss.scalarValue
                let elapsed = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
                if step >= warmup { stepTimes.append(elapsed) }
            }
            let meanStep = stepTimes.reduce(0, +) / Double(stepTimes.count)
            let tokensPerSecond = Double(tokenCount) / meanStep
            let flopsPerToken = configuration.trainingFLOPsPerToken
            let modelFLOPs = tokensPerSecond * flopsPerToken
            let mfu = modelFLOPs / (peak.gflops * 1e9)
            let peakRSS = ProcessMemory.peakResidentBytes()

            let rows: [(String, String)] = [
                ("model", "\(shape.summary), \(configuration.parameterCount) parameters"),
                ("batch", "\(batch) × \(shape.context) = \(tokenCount) tokens, AdamW, \(threads) threads"),
                ("steps", "\(warmup) warm-up + \(steps) timed; last loss \(String(format: "%.4f", lastLoss))"),
                ("step time", String(format: "%.1f ms (min %.1f, max %.1f)", meanStep * 1e3, stepTimes.min()! * 1e3, stepTimes.max()! * 1e3)),
                ("tokens/s", String(format: "%.0f", tokensPerSecond)),
                ("model FLOP/token", String(format: "%.1f M (6N + 12·L·d·T)", flopsPerToken / 1e6)),
                ("model FLOP/s", String(format: "%.1f GFLOP/s", modelFLOPs / 1e9)),
                ("GEMM library", "\(library.name) \(library.version), \(library.isa)"),
                ("fp32 GEMM peak", String(format: "%.1f GFLOP/s (%@, %d threads, same run)", peak.gflops, peak.shape, threads)),
                ("MFU", String(format: "%.3f", mfu)),
                ("peak RSS", String(format: "%.1f MiB", Double(peakRSS) / 1048576)),
            ]
            let keyWidth = rows.map(\.0.count).max()!
            for (key, value) in rows { print(key.padding(toLength: keyWidth, withPad: " ", startingAt: 0) + "  " + value) }
            if json {
                let object: [String: Any] = [
                    "tokens_per_s": tokensPerSecond, "step_ms": meanStep * 1e3, "mfu": mfu,
                    "peak_gflops": peak.gflops, "peak_rss_bytes": peakRSS,
                    "gemm_library": library.rawValue, "gemm_version": library.version, "gemm_isa": library.isa,
                    "model_gflops": modelFLOPs / 1e9, "parameters": configuration.parameterCount, "threads": threads,
                ]
                let data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])
                print(String(decoding: data, as: UTF8.self))
            }
        }
    }
}
