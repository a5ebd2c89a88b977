import ArgumentParser
import ConvoyComm
import ConvoyTensor
import ConvoyNN
import ConvoyParallel
import ConvoyTrain
import Foundation

/// `convoy train`: trains a GPT. With no arguments it trains the default small GPT on the built-in
/// `arithmetic` dataset and reports exact-match accuracy on held-out additions.
///
/// Every training setting's flag, TOML key, range and help come from ``TrainingSettings/all``: the command
/// declares only what is not a setting (`--config`, `--resume`) and hands the rest to the table's parser.
struct TrainCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "train",
        abstract: "Train a GPT (default: a small GPT on built-in arithmetic, then held-out accuracy).",
        discussion: "Settings come from defaults, then --config FILE (TOML sections [model], [data], [training], [parallel], [parallel.ddp], [parallel.pipeline]), then flags.\n\n" + TrainingSettings.flagHelp)

    @Option(help: "TOML configuration file; flags override its values.") var config: String?
    @Option(help: "Resume from this checkpoint directory.") var resume: String?
    // Not @Option each: swift-argument-parser needs one static property per option, and the settings are data.
    @Argument(parsing: .allUnrecognized, help: ArgumentHelp("Setting flags, listed under SETTINGS below.", valueName: "--flag value"))
    var settingFlags: [String] = []

    func run() throws {
        let flags = try TrainingSettings.parseFlags(settingFlags, otherFlags: ["--config", "--resume", "--help"])
        let configuration = try TrainingSettings.resolve(configFile: config, flags: flags)
        if let trace = configuration.trace { try RunDirectory.checkWritableFile(trace, flag: "--trace") }
        let timeline = configuration.trace == nil ? nil : Timeline()
        // mpirun forwards output through a pseudo-terminal; a live line redrawn from rank 0 only garbles it.
        let display = CommunicationBackend.isUnderMPI() ? ProgressDisplay(plainEvery: configuration.logEvery, isTerminal: false) : ProgressDisplay(plainEvery: configuration.logEvery)
        if configuration.model == "ctr" {
            try ClickThroughLaunch.train(configuration, resume: resume, display: display)
            return
        }

        let summary: TrainingSummary
        switch try CommunicationBackend.resolve(configuration.backend) {
        case .local:
            // The plan decides how many Local ranks run: dp·pp·tp, or the devices [[placement]] names (cpu:N is rank N).
            let plan = try ParallelPlan(settings: try configuration.parallelSettings(), worldSize: nil, model: configuration.modelConfiguration.shape)
            let ranks = plan.mesh.size
            let threads = configuration.threads ?? ComputePool.defaultThreadCount
            if ranks == 1 {
                ComputePool.setSharedThreadCount(threads)
                let trainer = try Trainer(configuration: configuration, resume: resume, display: display, timeline: timeline)
                if trainer.firstStep > 0 { try display.message("resumed from \(resume!) at step \(trainer.firstStep)") }
                summary = try trainer.run()
            } else {
                // Validate before starting any rank, so a bad configuration fails once, clearly.
                // (A resume keeps the checkpoint's global batch and fits the accumulation steps to this world.)
                let checked = resume == nil ? configuration : try Trainer.fittingAccumulation(configuration, worldSize: ranks)
                _ = try DistributedSampler(globalBatch: checked.batch, worldSize: plan.dataParallelSize, rank: 0, microBatches: checked.accumulateSteps)
                // Tokenise into the cache before the ranks start, so none waits on a collective meanwhile.
                if configuration.tokenizer != nil { _ = try configuration.makeDataset(display: display) }
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
