import ArgumentParser
import ConvoyComm
import ConvoyNN
import ConvoyParallel
import ConvoyTensor
import Foundation

/// `convoy bench tp`: GPT training steps (forward, backward, SGD) of one global batch on one rank, then cut
/// across tp Local ranks (one thread each); tokens/s of both, the scaling efficiency, the tensor-parallel
/// communication counted by a wrapping process group against Megatron's formula, and the activation bytes a
/// transformer block keeps for backward on a rank against Korthikanti et al.'s accounting.
struct BenchTPCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tp",
        abstract: "Tensor-parallel training steps on Local ranks: tokens/s against one rank, communication and activation bytes against Megatron's formulas.")

    @OptionGroup var shape: ModelShapeOptions
    @Option(help: "Tensor-parallel ranks (one thread each).") var tp: Int = 2
    @Option(help: "Sequences per step.") var batch: Int = 8
    @Option(help: "Untimed warm-up steps.") var warmup: Int = 1
    @Option(help: "Timed steps.") var steps: Int = 3
    @Flag(name: .customLong("sequence-parallel"), help: "Sequence parallelism.") var sequenceParallel = false
    @Flag(help: "End with one JSON line of the results.") var json = false

    func validate() throws {
        for (name, value) in [("--tp", tp), ("--batch", batch), ("--steps", steps)] where value <= 0 {
            throw ValidationError("\(name) must be positive, got \(value)")
        }
        guard warmup >= 0 else { throw ValidationError("--warmup must be ≥ 0") }
    }

    /// What one configuration measured.
    struct Measurement: Sendable {
        var secondsPerStep: Double
        var communicatedElements: Int
        var activationBytes: Int
        /// Share of the column-parallel input-gradient all-reduces that ran during weight-gradient GEMMs.
        var overlap: Double
    }

    func run() throws {
        let configuration = shape.configuration
        var settings = ParallelSettings()
        settings.tensorParallelSize = tp
        settings.sequenceParallel = sequenceParallel
        _ = try ParallelPlan(settings: settings, worldSize: tp, model: configuration.shape)
        let single = try measure(configuration, ranks: 1)
        let parallel = try measure(configuration, ranks: tp)
        let tokens = Double(batch * shape.context)
        let tokensPerSecond1 = tokens / single.secondsPerStep, tokensPerSecondN = tokens / parallel.secondsPerStep
        let efficiency = tokensPerSecondN / (Double(tp) * tokensPerSecond1)
        let measuredBytes = 4 * parallel.communicatedElements
        let formulaBytes = TensorParallelCommunication.bytesPerMicroBatch(model: configuration.shape, tp: tp, sequenceParallel: sequenceParallel,
                                                                          sequences: batch, time: shape.context)
        // Korthikanti et al.'s per-layer activation tensors at Convoy's fp32 with dropout off (the shape options'
        // default); see ActivationMemory.dropoutFreeFP32Bytes. Measured per transformer block, on rank 0.
        let activationFormula = Int(ActivationMemory.dropoutFreeFP32Bytes(sequence: shape.context, batch: batch, width: shape.dModel, heads: shape.heads,
                                                                          tp: tp, sequenceParallel: sequenceParallel))
        let rows: [(String, String)] = [
            ("model", "\(shape.summary), \(configuration.parameterCount) parameters, batch \(batch), SGD"),
            ("layout", "tp \(tp)\(sequenceParallel ? " with sequence parallelism" : ""), one thread per rank (Local)"),
            ("tokens/s, 1 rank", String(format: "%.0f", tokensPerSecond1)),
            ("tokens/s, tp \(tp)", String(format: "%.0f", tokensPerSecondN)),
            ("scaling efficiency", String(format: "%.3f", efficiency)),
            ("tp bytes per step", "\(measuredBytes) measured, \(formulaBytes) by the formula"),
            ("backward overlap", String(format: "%.3f of the column-parallel input-gradient all-reduce time ran during the weight-gradient GEMMs", parallel.overlap)),
            ("activation bytes/layer", "\(parallel.activationBytes) measured per block on rank 0, \(activationFormula) by Korthikanti et al.'s accounting at fp32 with dropout off (ratio \(String(format: "%.3f", Double(parallel.activationBytes) / Double(activationFormula))))"),
        ]
        let keyWidth = rows.map(\.0.count).max()!
        for (key, value) in rows { print(key.padding(toLength: keyWidth, withPad: " ", startingAt: 0) + "  " + value) }
        if json {
            let object: [String: Any] = [
                "tp": tp, "sequence_parallel": sequenceParallel, "tokens_per_s_1": tokensPerSecond1, "tokens_per_s_n": tokensPerSecondN,
                "scaling_efficiency": efficiency, "comm_bytes_measured": measuredBytes, "comm_bytes_formula": formulaBytes,
                "activation_bytes_per_rank": parallel.activationBytes, "activation_bytes_formula": activationFormula, "state_dtype": "fp32",
                "activation_accounting": "per transformer layer, fp32, dropout off: s·b·h·(16 + (48 + 4·a·s/h)/t), or s·b·h·(64 + 4·a·s/h)/t with sequence parallelism", "overlap_fraction": parallel.overlap,
            ]
            let data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])
            print(String(decoding: data, as: UTF8.self))
        }
    }

    /// Timed steps of the whole batch on `ranks` tensor-parallel Local ranks (rank 0's figures).
    func measure(_ configuration: GPTConfiguration, ranks: Int) throws -> Measurement {
        let batch = batch, time = shape.context, steps = steps, warmup = warmup, sequenceParallel = sequenceParallel
        let results = try LocalWorld.run(size: ranks, threadsPerRank: 1) { group -> Measurement in
            let model = try GPT(configuration, seed: 1)
            let counting = CountingProcessGroup(group)
            let tensorParallel = ranks > 1 ? try TensorParallelism(model: model, group: counting, sequenceParallel: sequenceParallel) : nil
            let optimizer = SGD(ParameterGroup.decayingMatrices(of: model, weightDecay: 0.1), learningRate: 1e-3)
            let generator = PhiloxRandom(seed: 5, stream: 17)
            let count = batch * time
            var total = 0.0
            for step in 0..<(warmup + steps) {
                let tokens = (0..<count).map { Int32(generator.block(UInt64(step * count + $0)).0 % UInt32(configuration.vocabularySize)) }
                counting.reset()
                tensorParallel?.engine.overlap.reset()
                try group.barrier()
                let start = DispatchTime.now().uptimeNanoseconds
                let context = ForwardContext(training: true, seed: 1, step: step)
                let body = {
                    let loss = model.loss(tokens, targets: tokens.map { ($0 + 1) % Int32(configuration.vocabularySize) }, batch: batch, time: time, context: context)
                    try loss.backward()
                }
                if let tensorParallel { try tensorParallel.run(body) } else { try body() }
                optimizer.step()
                optimizer.zeroGradients()
                try group.barrier()
                if step >= warmup { total += Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9 }
            }
            let communicated = counting.records.reduce(0) { $0 + $1.count }
            // One more forward, untimed, counts what each block keeps for backward (its mean over the blocks).
            let perBlock = { ActivationMemory.perBlock(model: model, tokens: (0..<count).map { Int32($0 % configuration.vocabularySize) }, batch: batch,
                                                        time: time, context: ForwardContext(training: true, seed: 1), owner: group.rank) }
            let blockBytes = try tensorParallel.map { try $0.run(perBlock) } ?? perBlock()
            return Measurement(secondsPerStep: total / Double(steps), communicatedElements: communicated,
                               activationBytes: blockBytes.reduce(0, +) / Swift.max(blockBytes.count, 1), overlap: tensorParallel?.engine.overlap.overlappedFraction ?? 0)
        }
        return results[0]
    }
}
