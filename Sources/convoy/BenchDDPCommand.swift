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
        discussion: "Overlap fraction: the share of all-reduce time that lies inside backward spans on the same rank (from the timeline).")

    @Option(help: "Data-parallel ranks.") var ranks: Int = 2
    @OptionGroup var shape: ModelShapeOptions
    @Option(name: .customLong("batch-per-rank"), help: "Sequences per rank per step.") var batchPerRank: Int = 4
    @Option(help: "Untimed warm-up steps.") var warmup: Int = 1
    @Option(help: "Timed steps.") var steps: Int = 3
    @Option(name: .customLong("bucket-cap-mb"), help: "Bucket cap in MiB.") var bucketCapMB: Double = 25
    @Option(name: .customLong("first-bucket-cap-mb"), help: "First bucket cap in MiB.") var firstBucketCapMB: Double = 1
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
    }

    /// Trains on `rankCount` Local ranks with one compute thread each.
    func measure(rankCount: Int) throws -> Result {
        let configuration = shape.configuration
        let timeline = Timeline()
        var chosen = DataParallelOptions()
        chosen.bucketCapMB = bucketCapMB
        chosen.firstBucketCapMB = firstBucketCapMB
        let options = chosen
        let (warmup, steps, batch, time) = (self.warmup, self.steps, batchPerRank, shape.context)
        let results = try LocalWorld.run(size: rankCount, threadsPerRank: 1) { group -> (Double, Int) in
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
                    start = Timeline.now
                }
                let tokens = (0..<(batch * time)).map { Int32(generator.block(UInt64(step * batch * time + $0)).0 % 256) }
                let loss = timeline.measure("forward", category: "forward", rank: group.rank) {
                    model.loss(tokens, targets: tokens.map { ($0 + 1) % 256 }, batch: batch, time: time, context: ForwardContext(training: true, step: step))
                }
                try timeline.measure("backward", category: "backward", rank: group.rank) { try loss.backward() }
                try parallel?.finishGradientSynchronization()
                timeline.measure("optimizer step", category: "optimizer", rank: group.rank) { optimizer.step() }
                if let parallel { parallel.zeroGradients() } else { optimizer.zeroGradients() }
            }
            try group.barrier()
            let seconds = Double(Timeline.now - start) / 1e9
            return (Double(steps * batch * time * group.size) / seconds, parallel?.bucketCount ?? 0)
        }
        return Result(tokensPerSecond: results[0].0, buckets: results[0].1,
                      overlap: timeline.overlapFraction(communication: "allreduce", computation: "backward"))
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
        ]
        let width = rows.map(\.0.count).max()!
        for (key, value) in rows { print(key.padding(toLength: width, withPad: " ", startingAt: 0) + "  " + value) }
        if json {
            let object: [String: Any] = ["tokens_per_s_1": single.tokensPerSecond, "tokens_per_s_n": parallel.tokensPerSecond, "ranks": ranks,
                                         "scaling_efficiency": efficiency, "overlap_fraction": parallel.overlap, "buckets": parallel.buckets]
            print(String(decoding: try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]), as: UTF8.self))
        }
    }
}
