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
    @Option(help: "Compute precision: fp32, or bf16 (bf16 GEMM operands; every parameter computes with its fp32 master rounded to bf16, so ZeRO gathers bf16).")
    var precision: String = "fp32"
    @OptionGroup var gradientReduce: GradientReduceOptions
    @Option(help: "Rounds of the gradient-reduction timing (fp32 and bf16 alternately, after the run).") var rounds: Int = 5
    @Flag(help: "End with one JSON line of the results.") var json = false

    /// Whether the runs use the flat-buffer optimizer, as training would with the same fuse_optimizer.
    var fused: Bool { (FusionChoice(rawValue: fuseOptimizer) ?? .automatic).isEnabled(ranks: dp) }

    func validate() throws {
        guard dp >= 1 else { throw ValidationError("--dp must be at least 1") }
        guard (0...3).contains(zeroStage) else { throw ValidationError("--zero-stage must be 0, 1, 2 or 3, got \(zeroStage)") }
        guard bucketCapMB > 0, bucketsPerGroup >= 1 else { throw ValidationError("--bucket-cap-mb must be positive and --buckets-per-group at least 1") }
        guard FusionChoice(rawValue: fuseOptimizer) != nil else { throw ValidationError("--fuse-optimizer must be auto, on or off, got \(fuseOptimizer)") }
        guard ["fp32", "bf16"].contains(precision) else { throw ValidationError("--precision must be fp32 or bf16, got \(precision)") }
        for (name, value) in [("--batch-per-rank", batchPerRank), ("--steps", steps), ("--rounds", rounds)] where value <= 0 {
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
        /// Rank 0, per timed step: bytes of the parameter all-gathers and of the gradient reductions it issued.
        var gatherBytesPerStep: Int
        var reductionBytesPerStep: Int
        /// Rank 0: milliseconds of each round's gradient reduction (the run's collective over the whole gradient),
        /// fp32 and bf16 alternately.
        var reductionMilliseconds: ReductionTimes
    }

    static func dtype(_ name: String) -> DType { name == "bf16" ? .bfloat16 : .float32 }

    /// Times the gradient reduction of `count` elements as the run does it — an all-reduce at stage 0, a
    /// reduce-scatter at stages 1–3 — in fp32 and in bf16 (a rounded copy reduced and widened back), alternately
    /// for `rounds` rounds after a barrier each; milliseconds per reduction on this rank.
    static func timeGradientReduction(group: any ProcessGroup, count: Int, stage: Int, rounds: Int) throws -> ReductionTimes {
        let padded = (count + group.size - 1) / group.size * group.size
        let gradients = Tensor.zeros([padded])
        for index in 0..<padded { gradients.floatPointer[index] = Float(index % 97) * 1e-3 }
        var times = ReductionTimes()
        for _ in 0..<rounds {
            for dtype in [DType.float32, .bfloat16] {
                try group.barrier()
                let start = Timeline.now
                let sent = gradients.converted(to: dtype)
                let output = Tensor(uninitializedShape: [stage == 0 ? padded : padded / group.size], dtype: dtype)
                let launched = Timeline.now
                if stage == 0 {
                    try group.allReduceAsync(CommunicationBuffer(sent), operation: .average).wait()
                } else {
                    try group.reduceScatterAsync(input: CommunicationBuffer(sent), output: CommunicationBuffer(output), operation: .average).wait()
                }
                let reduced = Timeline.now
                _ = (stage == 0 ? sent : output).converted(to: .float32)
                let end = Timeline.now
                let round = (total: Double(end - start) / 1e6, collective: Double(reduced - launched) / 1e6)
                if dtype == .float32 { times.fp32.append(round) } else { times.bf16.append(round) }
            }
        }
        return times
    }

    /// Milliseconds per round: the whole reduction (conversions included) and the collective alone.
    struct ReductionTimes {
        var fp32: [(total: Double, collective: Double)] = []
        var bf16: [(total: Double, collective: Double)] = []
    }

    /// The benchmark's AdamW (lr 3e-4, decay 0.1 on matrices): per-tensor, or the flat-buffer kind with the
    /// given gradient layout and placement.
    static func adamW(_ groups: [ParameterGroup], fused: Bool, gradientLayout: FlatParameterBuffer.GradientLayout = .flat,
                      placement: FlatParameterBuffer.Placement = .packed) throws -> any Optimizer {
        fused ? try FusedAdam.adamW(groups, learningRate: 3e-4, weightDecay: 0.1, gradientLayout: gradientLayout, placement: placement)
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
        let (warmup, steps, batch, time, fused, rounds) = (self.warmup, self.steps, batchPerRank, shape.context, self.fused, self.rounds)
        var chosen = DataParallelOptions()
        chosen.bucketCapMB = bucketCapMB
        chosen.bucketsPerGroup = bucketsPerGroup
        chosen.parameterDType = Self.dtype(precision)
        chosen.gradientReduceDType = try gradientReduce.elementType()
        let options = chosen
        let computePrecision = Self.dtype(precision)
        let results = try LocalWorld.run(size: dp, threadsPerRank: 1) { local -> (Double, (Int, Int, Int), Int, (Double, Double)?, (Int, Int), ReductionTimes) in
            let group = CountingProcessGroup(local)
            let model = try GPT(configuration, seed: 1)
            let groups = ParameterGroup.decayingMatrices(of: model, weightDecay: 0.1)
            var parallel: DataParallel?
            var zero: DistributedOptimizer?
            var shardGroups: [ParameterGroup] = []
            let optimizer: any Optimizer
            if stage == 0 {
                // As training does: fused gradients when there are several ranks.
                parallel = group.size > 1 ? try DataParallel(module: model, group: group, options: options) : nil
                optimizer = try Self.adamW(groups, fused: fused, gradientLayout: parallel?.fusedGradients != nil ? .external : .flat)
            } else {
                let distributed = try DistributedOptimizer(module: model, group: group, stage: stage, options: options, weightDecay: 0.1) { groups throws -> any Optimizer in
                    shardGroups = groups
                    return try Self.adamW(groups, fused: fused, gradientLayout: .external, placement: .inPlace)
                }
                zero = distributed
                optimizer = distributed.optimizer
            }
            let generator = PhiloxRandom(seed: 5, stream: UInt64(group.rank))
            var start: UInt64 = 0
            // Without ZeRO the parameters are their own masters, rounded for each step (as the training runtime does).
            let copies = stage == 0 && computePrecision == .bfloat16 ? try BFloat16ComputeCopies(parameters: model.parameters) : nil
            for step in 0..<(warmup + steps) {
                if step == warmup {
                    try group.barrier()
                    group.reset()
                    start = Timeline.now
                }
                let tokens = (0..<(batch * time)).map { Int32(generator.block(UInt64(step * batch * time + $0)).0 % 256) }
                copies?.roundParameters()
                try ComputePrecision.with(computePrecision) {
                    try model.loss(tokens, targets: tokens.map { ($0 + 1) % 256 }, batch: batch, time: time, context: ForwardContext(training: true, step: step)).backward()
                }
                copies?.restoreMasters()
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
            let records = group.records
            let gatherBytes = records.filter { $0.kind == .allGather }.reduce(0) { $0 + $1.bytes } / steps
            let reductionBytes = records.filter { $0.kind == .allReduce || $0.kind == .reduceScatter }.reduce(0) { $0 + $1.bytes } / steps
            let allocator = TensorAllocator.shared
            let rank = group.rank
            let bytes = (allocator.liveBytes(of: .parameters, owner: rank), allocator.liveBytes(of: .gradients, owner: rank),
                         allocator.liveBytes(of: .optimizerState, owner: rank))
            // Counted above first: these two optimizers' moments are extra state, for the timing only.
            let shardSteps = zero == nil ? nil : Self.timeShardSteps(
                perTensor: try Self.adamW(shardGroups, fused: false),
                fused: try Self.adamW(shardGroups, fused: true, gradientLayout: .external, placement: .inPlace))
            let reduction = try Self.timeGradientReduction(group: local, count: model.parameterCount, stage: stage, rounds: rounds)
            return (Double(steps * batch * time * group.size) / seconds, bytes, zero?.peakGatheredParameterBytes ?? 0, shardSteps,
                    (gatherBytes, reductionBytes), reduction)
        }
        return Measurement(tokensPerSecond: results[0].0, bytes: results.map(\.1), peakGatheredBytes: results.map(\.2).max() ?? 0,
                           shardStepMilliseconds: results[0].3, gatherBytesPerStep: results[0].4.0, reductionBytesPerStep: results[0].4.1,
                           reductionMilliseconds: results[0].5)
    }

    func run() throws {
        let parameterCount = shape.configuration.parameterCount
        let plan = try ZeROMemoryPlan(parameterCount: parameterCount, dataParallelSize: dp, stage: zeroStage, optimizer: .adamW, parameterDType: Self.dtype(precision))
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
        print(String(format: "rank 0 per step: parameter all-gathers %d B (%.3f B per parameter; %@ compute copies), gradient reductions %d B (%@)",
                     measured.gatherBytesPerStep, Double(measured.gatherBytesPerStep) / Double(parameterCount), precision,
                     measured.reductionBytesPerStep, gradientReduce.name))
        let reduction = measured.reductionMilliseconds
        func median(_ values: [Double]) -> Double { values.sorted()[values.count / 2] }
        let ratios = zip(reduction.fp32, reduction.bf16).map { $0.total / $1.total }
        let collectiveRatios = zip(reduction.fp32, reduction.bf16).map { $0.collective / $1.collective }
        print(String(format: "gradient %@ of %d elements, rank 0, %d alternating rounds: fp32 median %.2f ms (collective %.2f), bf16 median %.2f ms (collective %.2f, the rest rounding and widening); fp32 ÷ bf16 per round: %@; collective alone: %@",
                     zeroStage == 0 ? "all-reduce" : "reduce-scatter", parameterCount, rounds, median(reduction.fp32.map(\.total)), median(reduction.fp32.map(\.collective)),
                     median(reduction.bf16.map(\.total)), median(reduction.bf16.map(\.collective)),
                     ratios.map { String(format: "%.2f", $0) }.joined(separator: " "), collectiveRatios.map { String(format: "%.2f", $0) }.joined(separator: " ")))
        if json {
            var object: [String: Any] = ["precision": precision, "grad_reduce_dtype": gradientReduce.name,
                                         "gather_bytes_per_step": measured.gatherBytesPerStep, "reduction_bytes_per_step": measured.reductionBytesPerStep,
                                         "reduction_ms_fp32": reduction.fp32.map(\.total), "reduction_ms_bf16": reduction.bf16.map(\.total),
                                         "collective_ms_fp32": reduction.fp32.map(\.collective), "collective_ms_bf16": reduction.bf16.map(\.collective),
                                         "reduction_fp32_over_bf16_median": median(ratios), "collective_fp32_over_bf16_median": median(collectiveRatios), "zero_stage": zeroStage, "dp": dp, "state_bytes_measured": worst, "state_bytes_formula": plan.totalBytes,
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
