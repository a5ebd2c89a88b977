import ArgumentParser
import ConvoyComm
import ConvoyNN
import ConvoyParallel
import ConvoyTensor
import Foundation

/// `convoy bench ddp`: data-parallel scaling of GPT training on Local ranks.
struct BenchDDPCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ddp",
        abstract: "Train the benchmark GPT on 1 rank × 1 thread and on N Local ranks × 1 thread (same per-rank batch); report scaling and overlap.",
        discussion: """
            Overlap fraction: the share of all-reduce time that lies inside backward spans on the same rank (from the timeline). \
            All-reduce per step (rank 0): the time at least one bucket group's all-reduce was in flight, from launch to completion; \
            the wait after backward is the part not hidden behind it; bytes are those the rank's all-reduces sent (counted).
            """)

    @Option(help: "Data-parallel ranks.") var ranks: Int = 2
    @OptionGroup var shape: ModelShapeOptions
    @Option(name: .customLong("batch-per-rank"), help: "Sequences per rank per step.") var batchPerRank: Int = 4
    @Option(help: "Untimed warm-up steps.") var warmup: Int = 1
    @Option(help: "Timed steps.") var steps: Int = 3
    @Option(name: .customLong("bucket-cap-mb"), help: "Bucket cap in MiB.") var bucketCapMB: Double = 25
    @Option(name: .customLong("first-bucket-cap-mb"), help: "First bucket cap in MiB.") var firstBucketCapMB: Double = 1
    @OptionGroup var gradientReduce: GradientReduceOptions
    @Flag(help: "End with one JSON line of the results.") var json = false

    func validate() throws {
        for (name, value) in [("--ranks", ranks), ("--batch-per-rank", batchPerRank), ("--steps", steps)] where value <= 0 {
            throw ValidationError("\(name) must be positive, got \(value)")
        }
    }

    struct Result {
        var tokensPerSecond: Double
        var buckets: Int
        var overlap: Double
        /// Rank 0, per timed step: milliseconds with an all-reduce in flight, milliseconds waiting for the
        /// reductions after backward, and bytes all-reduced.
        var allReduceMilliseconds: Double
        var synchronizationWaitMilliseconds: Double
        var allReduceBytes: Int
    }

    /// Trains on `rankCount` Local ranks with one compute thread each.
    func measure(rankCount: Int) throws -> Result {
        let configuration = shape.configuration
        let timeline = Timeline()
        var chosen = DataParallelOptions()
        chosen.bucketCapMB = bucketCapMB
        chosen.firstBucketCapMB = firstBucketCapMB
        chosen.gradientReduceDType = try gradientReduce.elementType()
        let options = chosen
        let (warmup, steps, batch, time) = (self.warmup, self.steps, batchPerRank, shape.context)
        let results = try LocalWorld.run(size: rankCount, threadsPerRank: 1) { local -> (Double, Int, Int) in
            let group = CountingProcessGroup(local)
            let model = try GPT(configuration, seed: 1)
            let parallel = group.size > 1 ? try DataParallel(module: model, group: group, options: options, timeline: timeline) : nil
            // As in training: the flat-buffer optimizer when the world has more than one rank (fuse_optimizer auto).
            let groups = ParameterGroup.decayingMatrices(of: model, weightDecay: 0.1)
            let optimizer: any Optimizer = options.fuseOptimizer.isEnabled(ranks: group.size)
                ? try FusedAdam.adamW(groups, learningRate: 3e-4, weightDecay: 0.1, gradientLayout: parallel?.fusedGradients != nil ? .external : .flat)
                : Adam.adamW(groups, learningRate: 3e-4, weightDecay: 0.1)
            let generator = PhiloxRandom(seed: 5, stream: UInt64(group.rank))
            var start: UInt64 = 0
            for step in 0..<(warmup + steps) {
                if step == warmup {
                    try group.barrier()
                    timeline.clear()
                    group.reset()
                    start = Timeline.now
                }
                let tokens = (0..<(batch * time)).map { Int32(generator.block(UInt64(step * batch * time + $0)).0 % 256) }
                let loss = timeline.measure("forward", category: "forward", rank: group.rank) {
                    model.loss(tokens, targets: tokens.map { ($0 + 1) % 256 }, batch: batch, time: time, context: ForwardContext(training: true, step: step))
                }
                try timeline.measure("backward", category: "backward", rank: group.rank) { try loss.backward() }
                if let parallel {
                    try timeline.measure("gradient synchronization", category: "synchronization", rank: group.rank) { try parallel.finishGradientSynchronization() }
                }
                timeline.measure("optimizer step", category: "optimizer", rank: group.rank) { optimizer.step() }
                if let parallel { parallel.zeroGradients() } else { optimizer.zeroGradients() }
            }
            try group.barrier()
            let seconds = Double(Timeline.now - start) / 1e9
            let allReduceBytes = group.records.filter { $0.kind == .allReduce }.reduce(0) { $0 + $1.bytes }
            return (Double(steps * batch * time * group.size) / seconds, parallel?.bucketCount ?? 0, allReduceBytes / steps)
        }
        func millisecondsPerStep(_ category: String) -> Double { Double(timeline.coveredNanoseconds(category: category, rank: 0)) / 1e6 / Double(steps) }
        return Result(tokensPerSecond: results[0].0, buckets: results[0].1,
                      overlap: timeline.overlapFraction(communication: "allreduce", computation: "backward"),
                      allReduceMilliseconds: millisecondsPerStep("allreduce"), synchronizationWaitMilliseconds: millisecondsPerStep("synchronization"),
                      allReduceBytes: results[0].2)
    }

    func run() throws {
        let single = try measure(rankCount: 1)
        let parallel = try measure(rankCount: ranks)
        let efficiency = parallel.tokensPerSecond / (Double(ranks) * single.tokensPerSecond)
        let rows: [(String, String)] = [
            ("model", "\(shape.summary); \(batchPerRank) sequences per rank per step; AdamW"),
            ("1 rank × 1 thread", String(format: "%.0f tokens/s", single.tokensPerSecond)),
            ("\(ranks) ranks × 1 thread", String(format: "%.0f tokens/s", parallel.tokensPerSecond)),
            ("scaling efficiency", String(format: "%.3f", efficiency)),
            ("buckets", "\(parallel.buckets) (first cap \(firstBucketCapMB) MiB, cap \(bucketCapMB) MiB)"),
            ("overlap fraction", String(format: "%.3f of all-reduce time hidden behind backward", parallel.overlap)),
            ("gradient reduction", "\(gradientReduce.name): \(parallel.allReduceBytes) B all-reduced per step by rank 0"),
            ("all-reduce per step", String(format: "%.2f ms in flight, %.2f ms waited for after backward (rank 0)",
                                           parallel.allReduceMilliseconds, parallel.synchronizationWaitMilliseconds)),
        ]
        let width = rows.map(\.0.count).max()!
        for (key, value) in rows { print(key.padding(toLength: width, withPad: " ", startingAt: 0) + "  " + value) }
        if json {
            let object: [String: Any] = ["tokens_per_s_1": single.tokensPerSecond, "tokens_per_s_n": parallel.tokensPerSecond, "ranks": ranks,
                                         "scaling_efficiency": efficiency, "overlap_fraction": parallel.overlap, "buckets": parallel.buckets,
                                         "grad_reduce_dtype": gradientReduce.name, "allreduce_bytes_per_step": parallel.allReduceBytes,
                                         "allreduce_ms_per_step": parallel.allReduceMilliseconds, "sync_wait_ms_per_step": parallel.synchronizationWaitMilliseconds]
            print(String(decoding: try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]), as: UTF8.self))
        }
    }
}
