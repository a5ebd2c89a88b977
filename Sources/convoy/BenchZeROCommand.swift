import ArgumentParser
import ConvoyComm
import ConvoyNN
import ConvoyParallel
import ConvoyTensor
import Foundation

/// `convoy bench zero`: what ZeRO really allocates per rank, against the formula, and its speed against
/// stage 0.
struct BenchZeROCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "zero",
        abstract: "Per-rank bytes of parameters, gradients and optimizer state as allocated (counted by the allocator) vs the ZeRO formula; tokens/s vs stage 0.")

    @Option(help: "Data-parallel ranks (Local, one thread each).") var dp: Int = 2
    @Option(name: .customLong("zero-stage"), help: "ZeRO stage: 0, 1, 2 or 3.") var zeroStage: Int = 1
    @OptionGroup var shape: ModelShapeOptions
    @Option(name: .customLong("batch-per-rank"), help: "Sequences per rank per step.") var batchPerRank: Int = 4
    @Option(help: "Untimed warm-up steps.") var warmup: Int = 1
    @Option(help: "Timed steps.") var steps: Int = 3
    @Option(name: .customLong("fuse-optimizer"), help: "Flat-buffer AdamW (at stages 1–3 in place over the shard slices): auto (on for dp > 1), on or off.")
    var fuseOptimizer: String = "auto"
    @Option(name: .customLong("bucket-cap-mb"), help: "Bucket cap in MiB (stage 0 and stages 1–2).") var bucketCapMB: Double = 25
    @Option(name: .customLong("buckets-per-group"), help: "ZeRO: consecutive buckets reduced (and gathered) by one collective.") var bucketsPerGroup: Int = 1
    @Flag(help: "End with one JSON line of the results.") var json = false

    /// Whether the runs use the flat-buffer optimizer, as training would with the same fuse_optimizer.
    var fused: Bool { (FusionChoice(rawValue: fuseOptimizer) ?? .automatic).isEnabled(ranks: dp) }

    func validate() throws {
        guard dp >= 1 else { throw ValidationError("--dp must be at least 1") }
        guard (0...3).contains(zeroStage) else { throw ValidationError("--zero-stage must be 0, 1, 2 or 3, got \(zeroStage)") }
        guard bucketCapMB > 0, bucketsPerGroup >= 1 else { throw ValidationError("--bucket-cap-mb must be positive and --buckets-per-group at least 1") }
        guard FusionChoice(rawValue: fuseOptimizer) != nil else { throw ValidationError("--fuse-optimizer must be auto, on or off, got \(fuseOptimizer)") }
        for (name, value) in [("--batch-per-rank", batchPerRank), ("--steps", steps)] where value <= 0 {
            throw ValidationError("\(name) must be positive, got \(value)")
        }
    }

    struct Measurement {
        var tokensPerSecond: Double
        /// Per rank: parameters, gradients, optimizer state (bytes).
        var bytes: [(Int, Int, Int)]
        /// Stage 3: the most parameter bytes gathered at once on any rank (transient).
        var peakGatheredBytes: Int
        /// Stages 1–3, rank 0: milliseconds of one AdamW step over the rank's shard slices, per-tensor and
        /// fused in place, timed alternately on the same slices after the run.
        var shardStepMilliseconds: (perTensor: Double, fused: Double)?
    }

    /// The benchmark's AdamW (lr 3e-4, decay 0.1 on matrices): per-tensor, or the flat-buffer kind with the
    /// given gradient layout and placement.
    static func adamW(_ groups: [ParameterGroup], fused: Bool, gradientLayout: FlatParameterBuffer.GradientLayout = .flat,
                      placement: FlatParameterBuffer.Placement = .packed) -> any Optimizer {
        fused ? FusedAdam.adamW(groups, learningRate: 3e-4, weightDecay: 0.1, gradientLayout: gradientLayout, placement: placement)
            : Adam.adamW(groups, learningRate: 3e-4, weightDecay: 0.1)
    }

    /// Times `perTensor` and `fused` (over the same shard slices) alternately; mean milliseconds per step.
    static func timeShardSteps(perTensor: any Optimizer, fused: any Optimizer, repetitions: Int = 5) -> (perTensor: Double, fused: Double) {
        var nanoseconds: (UInt64, UInt64) = (0, 0)
        for _ in 0..<repetitions {
            var start = Timeline.now
            perTensor.step()
            nanoseconds.0 += Timeline.now - start
            start = Timeline.now
            fused.step()
            nanoseconds.1 += Timeline.now - start
        }
        return (Double(nanoseconds.0) / 1e6 / Double(repetitions), Double(nanoseconds.1) / 1e6 / Double(repetitions))
    }

    func measure(stage: Int) throws -> Measurement {
        let configuration = shape.configuration
        let (warmup, steps, batch, time, fused) = (self.warmup, self.steps, batchPerRank, shape.context, self.fused)
        var chosen = DataParallelOptions()
        chosen.bucketCapMB = bucketCapMB
        chosen.bucketsPerGroup = bucketsPerGroup
        let options = chosen
        let results = try LocalWorld.run(size: dp, threadsPerRank: 1) { group -> (Double, (Int, Int, Int), Int, (Double, Double)?) in
            let model = try GPT(configuration, seed: 1)
            let groups = ParameterGroup.decayingMatrices(of: model, weightDecay: 0.1)
            var parallel: DataParallel?
            var zero: DistributedOptimizer?
            var shardGroups: [ParameterGroup] = []
            let optimizer: any Optimizer
            if stage == 0 {
                // As training does: fused gradients when there are several ranks.
                parallel = group.size > 1 ? try DataParallel(module: model, group: group, options: options) : nil
                optimizer = Self.adamW(groups, fused: fused, gradientLayout: parallel?.fusedGradients != nil ? .external : .flat)
            } else {
                let distributed = try DistributedOptimizer(module: model, group: group, stage: stage, options: options, weightDecay: 0.1) { groups -> any Optimizer in
                    shardGroups = groups
                    return Self.adamW(groups, fused: fused, gradientLayout: .external, placement: .inPlace)
                }
                zero = distributed
                optimizer = distributed.optimizer
            }
            let generator = PhiloxRandom(seed: 5, stream: UInt64(group.rank))
            var start: UInt64 = 0
            for step in 0..<(warmup + steps) {
                if step == warmup {
                    try group.barrier()
                    start = Timeline.now
                }
                let tokens = (0..<(batch * time)).map { Int32(generator.block(UInt64(step * batch * time + $0)).0 % 256) }
                try model.loss(tokens, targets: tokens.map { ($0 + 1) % 256 }, batch: batch, time: time, context: ForwardContext(training: true, step: step)).backward()
                if let zero {
                    try zero.finishBackward()
                    try zero.finishGradientSynchronization()
                    try zero.step()
                    zero.zeroGradients()
                } else {
                    try parallel?.finishGradientSynchronization()
                    optimizer.step()
                    if let parallel { parallel.zeroGradients() } else { optimizer.zeroGradients() }
                }
            }
            try group.barrier()
            let seconds = Double(Timeline.now - start) / 1e9
            let allocator = TensorAllocator.shared
            let rank = group.rank
            let bytes = (allocator.liveBytes(of: .parameters, owner: rank), allocator.liveBytes(of: .gradients, owner: rank),
                         allocator.liveBytes(of: .optimizerState, owner: rank))
            // Counted above first: these two optimizers' moments are extra state, for the timing only.
            let shardSteps = zero == nil ? nil : Self.timeShardSteps(
                perTensor: Self.adamW(shardGroups, fused: false),
                fused: Self.adamW(shardGroups, fused: true, gradientLayout: .external, placement: .inPlace))
            return (Double(steps * batch * time * group.size) / seconds, bytes, zero?.peakGatheredParameterBytes ?? 0, shardSteps)
        }
        return Measurement(tokensPerSecond: results[0].0, bytes: results.map(\.1), peakGatheredBytes: results.map(\.2).max() ?? 0,
                           shardStepMilliseconds: results[0].3)
    }

    func run() throws {
        let parameterCount = shape.configuration.parameterCount
        let plan = try ZeROMemoryPlan(parameterCount: parameterCount, dataParallelSize: dp, stage: zeroStage, optimizer: .adamW)
        let measured = try measure(stage: zeroStage)
        let baseline = zeroStage == 0 ? measured : try measure(stage: 0)
        let worst = measured.bytes.map { $0.0 + $0.1 + $0.2 }.max()!
        func mib(_ bytes: Int) -> String { String(format: "%.2f MiB", Double(bytes) / 1_048_576) }
        print("# ZeRO stage \(zeroStage), dp \(dp) Local ranks × 1 thread; \(shape.summary), Ψ = \(parameterCount); AdamW (\(fused ? "fused" : "per-tensor")); \(batchPerRank) sequences per rank; buckets ≤ \(bucketCapMB) MiB, \(bucketsPerGroup) per group")
        print("rank  parameters     gradients      optimizer state  total          formula (\(plan.formula))")
        for (rank, bytes) in measured.bytes.enumerated() {
            let total = bytes.0 + bytes.1 + bytes.2
            print(String(format: "%4d  %-13@  %-13@  %-15@  %-13@  %@", rank, mib(bytes.0), mib(bytes.1), mib(bytes.2), mib(total), mib(plan.totalBytes)))
        }
        let ratio = Double(worst) / Double(plan.totalBytes)
        print(String(format: "measured ÷ formula (largest rank): %.4f", ratio))
        if zeroStage == 3 {
            print("between steps; while a step runs, gathered layers add at most \(mib(measured.peakGatheredBytes)) of parameters (the layers in use and the one prefetched)")
        }
        print(String(format: "tokens/s: %.0f at stage %d, %.0f at stage 0 (%.3f ×)", measured.tokensPerSecond, zeroStage, baseline.tokensPerSecond, measured.tokensPerSecond / baseline.tokensPerSecond))
        if let shardStep = measured.shardStepMilliseconds {
            print(String(format: "AdamW step over rank 0's shard slices (after the run, alternating, ranks stepping concurrently): per-tensor %.2f ms, fused in place %.2f ms (%.2f ×)",
                         shardStep.perTensor, shardStep.fused, shardStep.perTensor / shardStep.fused))
        }
        if json {
            var object: [String: Any] = ["zero_stage": zeroStage, "dp": dp, "state_bytes_measured": worst, "state_bytes_formula": plan.totalBytes,
                                         "tokens_per_s": measured.tokensPerSecond, "tokens_per_s_stage0": baseline.tokensPerSecond,
                                         "measured_over_formula": ratio, "peak_gathered_parameter_bytes": measured.peakGatheredBytes,
                                         "fused_optimizer": fused, "buckets_per_group": bucketsPerGroup, "bucket_cap_mb": bucketCapMB]
            if let shardStep = measured.shardStepMilliseconds {
                object["shard_step_ms_per_tensor"] = shardStep.perTensor
                object["shard_step_ms_fused"] = shardStep.fused
            }
            print(String(decoding: try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]), as: UTF8.self))
        }
    }
}
