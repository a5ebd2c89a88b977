import ArgumentParser
import ConvoyComm
import ConvoyTensor
import ConvoyNN
import ConvoyTrain
import Foundation

/// `convoy train`: trains a GPT. With no arguments it trains the default small GPT on the built-in
/// `arithmetic` dataset and reports exact-match accuracy on held-out additions.
struct TrainCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "train",
        abstract: "Train a GPT (default: a small GPT on built-in arithmetic, then held-out accuracy).",
        discussion: "Settings come from defaults, then --config FILE (TOML sections [model], [data], [training]), then flags.")

    @Option(help: "TOML configuration file; flags override its values.") var config: String?
    @Option(help: "Train on this text file's bytes instead of the arithmetic dataset.") var data: String?
    @Option(help: "Dataset: arithmetic or text.") var dataset: String?
    @Option(help: "Maximum digits per arithmetic operand.") var digits: Int?
    @Option(help: "Transformer blocks.") var layers: Int?
    @Option(name: .customLong("d-model"), help: "Model width.") var dModel: Int?
    @Option(help: "Attention heads.") var heads: Int?
    @Option(help: "Context length in tokens.") var context: Int?
    @Option(help: "Dropout probability (embeddings, attention, residuals).") var dropout: Double?
    @Option(help: "Global batch: sequences per optimizer step.") var batch: Int?
    @Option(name: .customLong("accumulate-steps"), help: "Micro-batches per step (gradient accumulation).") var accumulateSteps: Int?
    @Option(help: "Optimizer steps.") var steps: Int?
    @Option(help: "Peak learning rate.") var lr: Double?
    @Option(name: .customLong("min-lr"), help: "Final learning rate of the cosine schedule.") var minLR: Double?
    @Option(name: .customLong("lr-schedule"), help: "Learning-rate schedule: cosine or constant.") var lrSchedule: String?
    @Option(help: "Linear warm-up steps.") var warmup: Int?
    @Option(name: .customLong("weight-decay"), help: "Weight decay of matrices.") var weightDecay: Double?
    @Option(name: .customLong("grad-clip"), help: "Clip gradients to this global norm (0: off).") var gradClip: Double?
    @Option(help: "Optimizer: adamw, adam, sgd, momentum, nesterov.") var optimizer: String?
    @Option(help: "Random seed (data, initialisation, dropout).") var seed: Int?
    @Option(name: .customLong("eval-every"), help: "Validation loss every N steps (0: only at the end).") var evalEvery: Int?
    @Option(name: .customLong("checkpoint-every"), help: "Periodic checkpoint every N steps (0: off).") var checkpointEvery: Int?
    @Option(name: .customLong("log-every"), help: "Metrics (and plain progress lines) every N steps.") var logEvery: Int?
    @Option(help: "Directory of the run's outputs (config.toml, metrics.jsonl, periodic checkpoint).") var output: String?
    @Option(help: "Directory of the final checkpoint (default: <output>/final).") var save: String?
    @Flag(help: "Replace the metrics and checkpoints of an earlier run in --output/--save (without it they are refused; nothing Convoy did not write is ever replaced).") var overwrite = false
    @Option(help: "Resume from this checkpoint directory.") var resume: String?
    @Option(help: "Compute threads (default: CONVOY_THREADS or all cores); with --dp on Local ranks, shared among the ranks.") var threads: Int?
    @Option(help: "Data-parallel ranks (Local: threads of this process; under mpirun: the world size).") var dp: Int?
    @Option(help: "Communication backend: local or mpi (default: mpi under mpirun, else local).") var backend: String?
    @Option(name: .customLong("zero-stage"), help: "ZeRO stage: 0 (plain data parallelism), 1 (shard optimizer state), 2 (also gradients), 3 (also parameters).") var zeroStage: Int?
    @Option(help: "Bucket gradients (true/false).") var bucketing: String?
    @Option(name: .customLong("first-bucket-cap-mb"), help: "Cap of the first gradient bucket in MiB.") var firstBucketCapMB: Double?
    @Option(name: .customLong("bucket-cap-mb"), help: "Cap of the other gradient buckets in MiB.") var bucketCapMB: Double?
    @Option(name: .customLong("overlap-grad-reduce"), help: "Overlap bucket all-reduces with backward (true/false).") var overlapGradReduce: String?
    @Option(name: .customLong("fuse-all-reduce"), help: "One contiguous gradient buffer: auto, on or off.") var fuseAllReduce: String?
    @Option(name: .customLong("fuse-optimizer"), help: "Flat-buffer optimizer: auto, on or off.") var fuseOptimizer: String?
    @Option(name: .customLong("find-unused-parameters"), help: "Allow parameters without gradients (true/false).") var findUnusedParameters: String?
    @Option(name: .customLong("overlap-param-gather"), help: "ZeRO: gather updated parameters in the background, each layer waiting for its own (true/false).") var overlapParamGather: String?
    @Option(name: .customLong("reshard-after-forward"), help: "ZeRO-3: release each layer's parameters after its forward and gather them again for backward (true, default) or keep them (false).") var reshardAfterForward: String?
    @Option(name: .customLong("buckets-per-group"), help: "ZeRO: consecutive buckets reduce-scattered (and gathered) by one collective.") var bucketsPerGroup: Int?
    @Option(help: "Pipeline stages (pp); with --dp the world is pp·dp ranks, without it dp = world ÷ pp.") var pp: Int?
    @Option(name: .customLong("micro-batch-size"), help: "Sequences per micro-batch (checked: × accumulate steps × dp = batch).") var microBatchSize: Int?
    @Option(help: "Pipeline schedule: gpipe, 1f1b or interleaved-1f1b.") var schedule: String?
    @Option(name: .customLong("virtual-stages"), help: "Model chunks per pipeline rank (interleaved-1f1b).") var virtualStages: Int?
    @Option(name: .customLong("stage-layers"), help: "Layers per (virtual) stage, e.g. 3,3 (default: balanced).") var stageLayers: String?
    @Option(help: "Write a Chrome trace (chrome://tracing, Perfetto) of forward, backward, all-reduces and optimizer steps.") var trace: String?

    func run() throws {
        var flags: [(flag: String, value: String)] = []
        func add(_ flag: String, _ value: CustomStringConvertible?) { if let value { flags.append((flag, value.description)) } }
        add("--dataset", dataset); add("--data", data); add("--digits", digits)
        add("--layers", layers); add("--d-model", dModel); add("--heads", heads); add("--context", context); add("--dropout", dropout)
        add("--batch", batch); add("--accumulate-steps", accumulateSteps); add("--steps", steps); add("--lr", lr); add("--min-lr", minLR)
        add("--lr-schedule", lrSchedule); add("--warmup", warmup); add("--weight-decay", weightDecay); add("--grad-clip", gradClip)
        add("--optimizer", optimizer); add("--seed", seed); add("--eval-every", evalEvery); add("--checkpoint-every", checkpointEvery)
        add("--log-every", logEvery); add("--output", output); add("--save", save); add("--overwrite", overwrite ? true : nil); add("--threads", threads)
        add("--dp", dp); add("--backend", backend); add("--zero-stage", zeroStage); add("--bucketing", bucketing); add("--first-bucket-cap-mb", firstBucketCapMB)
        add("--bucket-cap-mb", bucketCapMB); add("--overlap-grad-reduce", overlapGradReduce); add("--fuse-all-reduce", fuseAllReduce)
        add("--fuse-optimizer", fuseOptimizer); add("--find-unused-parameters", findUnusedParameters); add("--overlap-param-gather", overlapParamGather)
        add("--reshard-after-forward", reshardAfterForward); add("--buckets-per-group", bucketsPerGroup); add("--trace", trace)
        add("--pp", pp); add("--micro-batch-size", microBatchSize); add("--schedule", schedule); add("--virtual-stages", virtualStages); add("--stage-layers", stageLayers)
        let configuration = try TrainingSettings.resolve(configFile: config, flags: flags)
        if let trace = configuration.trace { try RunDirectory.checkWritableFile(trace, flag: "--trace") }
        let timeline = configuration.trace == nil ? nil : Timeline()
        // mpirun forwards output through a pseudo-terminal; a live line redrawn from rank 0 only garbles it.
        let display = CommunicationBackend.isUnderMPI() ? ProgressDisplay(plainEvery: configuration.logEvery, isTerminal: false) : ProgressDisplay(plainEvery: configuration.logEvery)

        let summary: TrainingSummary
        switch try CommunicationBackend.resolve(configuration.backend) {
        case .local:
            let ranks = (configuration.dp ?? 1) * configuration.pipeline.stages
            let threads = configuration.threads ?? ComputePool.defaultThreadCount
            if ranks == 1 {
                ComputePool.setSharedThreadCount(threads)
                let trainer = try Trainer(configuration: configuration, resume: resume, display: display, timeline: timeline)
                if trainer.firstStep > 0 { try display.message("resumed from \(resume!) at step \(trainer.firstStep)") }
                summary = try trainer.run()
            } else {
                // Validate before starting any rank, so a bad configuration fails once, clearly.
                _ = try DistributedSampler(globalBatch: configuration.batch, worldSize: configuration.dp ?? 1, rank: 0, microBatches: configuration.accumulateSteps)
                let resume = self.resume
                let summaries = try LocalWorld.run(size: ranks, threadsPerRank: max(1, threads / ranks)) { group in
                    let trainer = try Trainer(configuration: configuration, group: group, resume: resume, display: display, timeline: timeline)
                    if trainer.firstStep > 0 && group.rank == 0 { try display.message("resumed from \(resume!) at step \(trainer.firstStep)") }
                    return try trainer.run()
                }
                summary = summaries[0]
            }
        case .mpi:
            let runtime = try MPIRuntime.initialize()
            let world = runtime.worldGroup()
            if let threads = configuration.threads { ComputePool.setSharedThreadCount(threads) }
            let trainer = try Trainer(configuration: configuration, group: world, resume: resume, display: display, timeline: timeline)
            summary = try trainer.run()
            if world.rank != 0 {
                if let timeline, let path = configuration.trace { try AtomicFile.write(timeline.chromeTraceJSON(), to: path + ".rank\(world.rank).json") }
                return
            }
        }
        if let timeline, let path = configuration.trace {
            try AtomicFile.write(timeline.chromeTraceJSON(), to: path)
            try display.message("trace: \(path) (open in chrome://tracing or ui.perfetto.dev)")
        }
        var lines = [String(format: "trained %d steps in %@ (%.0f tokens/s); final loss %.4f", summary.steps, ProgressDisplay.duration(summary.seconds), summary.tokensPerSecond, summary.finalLoss)]
        if let validation = summary.validationLoss { lines.append(String(format: "validation loss %.4f", validation)) }
        if let report = summary.arithmetic {
            lines.append(String(format: "held-out arithmetic: %d/%d exact (accuracy %.1f%%)", report.correct, report.problems, report.accuracy * 100))
        }
        lines.append("checkpoint: \(summary.checkpoint); metrics: \(configuration.output)/metrics.jsonl")
        for line in lines { try display.message(line) }
    }
}
