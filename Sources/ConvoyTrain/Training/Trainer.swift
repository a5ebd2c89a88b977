import ConvoyComm
import ConvoyNN
import ConvoyParallel
import ConvoyTensor
import Foundation

/// What a finished run reports.
public struct TrainingSummary: Sendable {
    public var steps: Int
    public var finalLoss: Double
    public var validationLoss: Double?
    public var arithmetic: ArithmeticReport?
    public var seconds: Double
    public var tokensPerSecond: Double
    public var checkpoint: String
}

/// The training loop: global batch → this rank's micro-batches → the plan's step schedule (forward/backward)
/// → its gradient synchronizer (reduce, one norm over the mesh, clip, step), with metrics, progress, periodic
/// evaluation and checkpoints.
///
/// The trainer names no strategy: a ``ConvoyParallel/ParallelPlan`` built from the configuration before any
/// compute decides the mesh, the step schedule and the synchronizer. The loss of each micro-batch is weighted by
/// its share of the global batch's counted targets, so the gradient equals that of the mean loss over the whole
/// global batch however it is split over micro-batches and ranks. Only rank 0 prints, writes metrics, evaluates
/// and saves checkpoints.
public final class Trainer {
    public let configuration: TrainingConfiguration
    public let model: any LanguageModel
    public let dataset: any TrainingDataset
    public let sampler: DistributedSampler
    /// The parallel layout: mesh, features, partition.
    public let plan: ParallelPlan
    /// This rank's step schedule and gradient synchronizer.
    public let runtime: ParallelRuntime
    public let group: (any ProcessGroup)?
    private let schedule: any LearningRateSchedule
    private let display: ProgressDisplay?
    private let timeline: Timeline?
    private var startStep = 0
    /// The ranks' agreed configuration and run identity (RunAgreement.swift).
    private let agreement: RunAgreement
    /// The loss scale and its history (`--loss-scale`); a scale of 1 that never skips without scaling.
    public let lossScaler: LossScaler

    /// The optimizer the synchronizer steps.
    public var optimizer: any Optimizer { runtime.optimizer }

    /// Rank 0 (or the only rank) does the printing, evaluation and saving.
    public var isLeader: Bool { (group?.rank ?? 0) == 0 }

    /// Builds the plan, model, optimizer and data for a configuration; with `resume`, restores a checkpoint.
    /// With a `group`, this rank trains its part of every step as the plan says (collective: every rank of the
    /// group must construct its trainer).
    public init(configuration: TrainingConfiguration, group: (any ProcessGroup)? = nil, resume: String? = nil,
                display: ProgressDisplay? = nil, timeline: Timeline? = nil) throws {
        try configuration.validate()
        agreement = try RunAgreement.establish(configuration, group: group)
        self.configuration = configuration
        self.group = group
        // Every refusal happens here, before the model or the data exist.
        plan = try ParallelPlan(settings: try configuration.parallelSettings(), worldSize: group?.size ?? 1, model: configuration.modelConfiguration.shape)
        let dataParallelRank = plan.mesh.position(along: .dp, of: group?.rank ?? 0)
        dataset = try configuration.makeDataset()
        sampler = try DistributedSampler(globalBatch: configuration.batch, worldSize: plan.dataParallelSize, rank: dataParallelRank,
                                         microBatches: configuration.accumulateSteps)
        model = try configuration.makeModel()
        let ranks = group?.size ?? 1, dp = plan.dataParallelSize
        runtime = try plan.build(model: model, world: group, weightDecay: Float(configuration.weightDecay), timeline: timeline,
                                 makeOptimizer: { configuration.makeOptimizer(for: $0, ranks: ranks, externalGradients: $1) },
                                 makeShardOptimizer: { configuration.makeShardOptimizer($0, dataParallelSize: dp) })
        schedule = configuration.learningRateSchedule
        lossScaler = LossScaler(try LossScaling(parsing: configuration.lossScale))
        self.display = (group?.rank ?? 0) == 0 ? display : nil
        self.timeline = timeline
        if let resume { try restore(from: resume) }
    }

    private func restore(from directory: String) throws {
        var optimizerFile = TrainingCheckpoint.optimizerFileName
        // The placement each parameter was saved with tells what each rank held; another placement cannot load.
        try PlacementManifest.read(from: try TrainingCheckpoint.resolvedDirectory(directory))?
            .checkLoadable(into: PlacementManifest(model: model, mesh: plan.mesh), checkpoint: directory)
        if try runtime.checkpointLayoutIndex() != nil, let group {
            try runtime.checkCheckpointLayout(in: try TrainingCheckpoint.resolvedDirectory(directory))
            optimizerFile = TrainingCheckpoint.shardFileName(rank: group.rank, of: group.size)
        }
        // Sharded parameters (ZeRO-3) and pipeline stages hold only parts of the model: the loaded weights are
        // written into the whole model on every rank, and each rank takes its part back from them.
        let contents = try runtime.loadingWholeModel { try TrainingCheckpoint.load(from: directory, into: model, optimizerFile: optimizerFile) }
        let state = contents.state
        var saved = TrainingConfiguration()
        try? TrainingSettings.apply(toml: state.configuration, source: directory + "/trainer.json", to: &saved)
        try configuration.checkSameDataset(as: saved, checkpoint: directory)
        let runningStage = runtime.synchronizer.zeroStage
        guard saved.zeroStage == runningStage else {
            throw ConvoyError.incompatible("checkpoint \(directory) was written under ZeRO stage \(saved.zeroStage), the run uses --zero-stage \(runningStage); resume with the same stage (resharding is not supported yet)")
        }
        guard state.seed == configuration.seed else {
            throw ConvoyError.incompatible("checkpoint \(directory) was trained with seed \(state.seed), the run uses --seed \(configuration.seed); resume with the same seed")
        }
        guard state.optimizer == configuration.optimizer else {
            throw ConvoyError.incompatible("checkpoint \(directory) holds \(state.optimizer) state, the run uses --optimizer \(configuration.optimizer)")
        }
        guard state.dataPosition == state.step * configuration.batch else {
            throw ConvoyError.incompatible("checkpoint \(directory) was trained with a global batch of \(state.dataPosition / max(state.step, 1)), the run uses --batch \(configuration.batch)")
        }
        guard state.step <= configuration.steps else {
            throw ConvoyError.incompatible("checkpoint \(directory) is at step \(state.step), beyond --steps \(configuration.steps)")
        }
        try optimizer.load(contents.optimizerState)
        if let scale = state.lossScale { lossScaler.restore(scale: scale, goodSteps: state.lossScaleGoodSteps ?? 0) }
        startStep = state.step
    }

    /// The step training continues from (0, or the resumed checkpoint's step).
    public var firstStep: Int { startStep }

    /// Saves a checkpoint (collective). Rank 0 writes the model and the trainer state; the optimizer state is
    /// written whole by rank 0, or — when the plan shards it (ZeRO, pipelines) — as one shard file per rank plus
    /// a layout index, all assembled in one temporary directory before it is renamed into place. The whole model
    /// is left gathered (the caller releases it when training goes on).
    private func saveCheckpoint(afterStep step: Int, to directory: String) throws {
        try runtime.gatherFullModel()
        let manifest = (PlacementManifest.fileName, try PlacementManifest(model: model, mesh: plan.mesh).encoded())
        guard let index = try runtime.checkpointLayoutIndex(), let group else {
            if isLeader {
                try TrainingCheckpoint.save(model: model, optimizer: optimizer, state: state(afterStep: step), to: directory, extraFiles: [manifest.0: manifest.1])
            }
            try group?.barrier()
            return
        }
        // Sharded optimizer state: one file per rank plus the layout index, assembled in one temporary directory.
        let tag = agreement.shardedTemporaryTag(step: step)
        if isLeader { try TrainingCheckpoint.prepareTemporaryDirectory(for: directory, tag: tag) }
        try group.barrier()
        let temporary = TrainingCheckpoint.temporaryDirectoryPath(for: directory, tag: tag)
        try TrainingCheckpoint.writeOptimizerState(optimizer.state(), kind: configuration.optimizer,
                                                   to: temporary + "/" + TrainingCheckpoint.shardFileName(rank: group.rank, of: group.size))
        try group.barrier()
        if isLeader {
            try TrainingCheckpoint.save(model: model, optimizer: nil, state: state(afterStep: step), to: directory, temporary: temporary,
                                        extraFiles: [index.name: index.contents, manifest.0: manifest.1])
        }
        try group.barrier()
    }

    /// The trainer state after `step` completed steps.
    func state(afterStep step: Int) -> TrainerState {
        var state = TrainerState(step: step, seed: configuration.seed, dataPosition: step * configuration.batch,
                                 configuration: TrainingSettings.tomlText(configuration), optimizer: configuration.optimizer)
        if lossScaler.scaling != .none {
            state.lossScale = lossScaler.scale
            state.lossScaleGoodSteps = lossScaler.goodSteps
        }
        return state
    }

    /// Runs one optimizer step; returns (mean loss over the global batch, gradient norm before clipping).
    /// A step skipped by loss scaling (Inf/NaN gradients) reports a non-finite norm; ``lossScaler`` counts it.
    public func trainStep(_ step: Int) throws -> (loss: Double, gradientNorm: Double) {
        let result = try trainStepResult(step)
        return (result.loss, result.gradientNorm)
    }

    /// Runs one optimizer step at the configured precision, recompute and loss scale.
    func trainStepResult(_ step: Int) throws -> ParallelRuntime.StepResult {
        optimizer.learningRate = schedule.learningRate(at: step)
        let globalIndices = (step * configuration.batch)..<((step + 1) * configuration.batch)
        // Every rank needs the whole global batch's target count for the weights; its own examples are taken
        // from the same list rather than generated again.
        let globalExamples = globalIndices.map { dataset.trainingExample($0) }
        let totalCounted = max(globalExamples.reduce(0) { $0 + $1.countedTargets }, 1)
        // The synchronizer averages gradients over the data-parallel ranks, so each rank's share is scaled up.
        let replicas = Float(plan.dataParallelSize)
        let scale = lossScaler.scale
        let recompute = configuration.activationRecompute
        return try ComputePrecision.with(configuration.computePrecision) {
            try runtime.trainStep(maxGradientNorm: Float(configuration.gradClip), lossScaler: lossScaler) { microBatch in
                let examples = sampler.indices(step: step, microBatch: microBatch).map { globalExamples[$0 - globalIndices.lowerBound] }
                let weight = Float(examples.reduce(0) { $0 + $1.countedTargets }) / Float(totalCounted)
                return MicroBatch(tokens: examples.flatMap(\.inputs), targets: examples.flatMap(\.targets), batch: examples.count,
                                  time: configuration.context, lossScale: weight * replicas * scale, lossWeight: Double(weight),
                                  context: ForwardContext(training: true, seed: configuration.seed, step: step,
                                                          firstSequence: sampler.firstSequence(microBatch: microBatch), recompute: recompute))
            }
        }
    }

    /// Mean loss over up to `batches` batches of validation examples.
    public func validationLoss(batches: Int) -> Double? {
        let count = min(dataset.validationCount, batches * configuration.batch)
        guard count > 0 else { return nil }
        var total = 0.0, counted = 0
        withNoGrad {
            var start = 0
            while start < count {
                let examples = (start..<min(count, start + configuration.batch)).map { dataset.validationExample($0) }
                let tokens = examples.reduce(0) { $0 + $1.countedTargets }
                if tokens > 0 {
                    let loss = model.loss(examples.flatMap(\.inputs), targets: examples.flatMap(\.targets), batch: examples.count, time: configuration.context)
                    total += Double(loss.scalarValue) * Double(tokens)
                    counted += tokens
                }
                start += examples.count
            }
        }
        return counted > 0 ? total / Double(counted) : nil
    }

    /// Trains from ``firstStep`` to the configured number of steps, then saves the final checkpoint.
    public func run() throws -> TrainingSummary {
        let output = configuration.output
        var metrics: MetricsLog?
        // Checks every output path and locks the output directory for the whole run (RunDirectory.swift).
        let outputLock = isLeader ? try RunDirectory.claim(for: configuration, resuming: startStep > 0) : nil
        defer { withExtendedLifetime(outputLock) {} }
        if isLeader {
            try AtomicFile.write(Data(TrainingSettings.tomlText(configuration).utf8), to: output + "/config.toml")
            metrics = try MetricsLog(directory: output)
        }
        let tokensPerStep = Double(configuration.batch * configuration.context)
        let start = DispatchTime.now().uptimeNanoseconds
        func elapsed() -> Double { Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9 }
        var windowStart = 0.0, windowSteps = 0
        var tokensPerSecond = 0.0
        var lastLoss = Double.nan, lastValidation: Double?
        try display?.message("training \(model.parameterCount) parameters on \(dataset.summary); \(configuration.steps - startStep) steps of \(configuration.batch) × \(configuration.context) tokens; \(runtime.synchronizer.summary); \(runtime.schedule.summary)")

        for step in startStep..<configuration.steps {
            let scaleBefore = lossScaler.scale
            let result = try trainStepResult(step)
            let (loss, norm) = (result.loss, result.gradientNorm)
            if result.skipped {
                // Loss scaling: the update was skipped on every rank and the scale adjusted; training goes on.
                try metrics?.write(["step": step + 1, "skipped": true, "loss_scale": Double(scaleBefore), "next_loss_scale": Double(lossScaler.scale)])
                try display?.message("step \(step + 1): gradients not finite at loss scale \(scaleBefore); step skipped, scale now \(lossScaler.scale)")
            } else if !loss.isFinite {
                throw ConvoyError.invalidConfiguration("the loss became \(loss) at step \(step + 1); lower --lr (now \(configuration.learningRate)) or enable --grad-clip")
            }
            if loss.isFinite { lastLoss = loss }
            windowSteps += 1
            let now = elapsed()
            if now - windowStart > 0 { tokensPerSecond = Double(windowSteps) * tokensPerStep / (now - windowStart) }
            if windowSteps >= 20 { windowStart = now; windowSteps = 0 }
            let done = step + 1
            let remaining = Double(configuration.steps - done) * tokensPerStep / max(tokensPerSecond, 1e-9)
            let learningRate = Double(optimizer.learningRate)
            try display?.step(done, of: configuration.steps, loss: loss, tokensPerSecond: tokensPerSecond, learningRate: learningRate, elapsed: now, remaining: remaining)
            if !result.skipped && (done % configuration.logEvery == 0 || done == configuration.steps) {
                try metrics?.write(["step": done, "loss": loss, "lr": learningRate, "tokens_per_s": tokensPerSecond, "grad_norm": norm, "elapsed_s": now])
            }
            if configuration.evalEvery > 0 && done % configuration.evalEvery == 0 && done < configuration.steps {
                // Rank 0 alone evaluates: every rank gathers the parameters first (collective under ZeRO-3 and pipelines).
                try runtime.gatherFullModel()
                defer { runtime.releaseFullModel() }
                if isLeader, let validation = validationLoss(batches: configuration.evalBatches) {
                    lastValidation = validation
                    try metrics?.write(["step": done, "val_loss": validation, "elapsed_s": elapsed()])
                    try display?.message(String(format: "step %d: validation loss %.4f", done, validation))
                }
                try group?.barrier()
            }
            if configuration.checkpointEvery > 0 && done % configuration.checkpointEvery == 0 && done < configuration.steps {
                try saveCheckpoint(afterStep: done, to: configuration.periodicCheckpointDirectory)
                runtime.releaseFullModel()
            }
        }

        let seconds = elapsed()
        // From here on the model's parameters are complete on every rank (also after run() returns).
        try runtime.gatherFullModel()
        var report: ArithmeticReport?
        if isLeader {
            if let validation = validationLoss(batches: configuration.evalBatches) {
                lastValidation = validation
                try metrics?.write(["step": configuration.steps, "val_loss": validation, "elapsed_s": seconds])
            }
            if let arithmetic = dataset as? ArithmeticDataset {
                report = try ArithmeticEvaluator.evaluate(model: model, problems: arithmetic.heldOutProblems)
                try metrics?.write(["step": configuration.steps, "accuracy": report!.accuracy, "problems": report!.problems])
            }
        }
        try saveCheckpoint(afterStep: configuration.steps, to: configuration.finalCheckpointDirectory)
        let trained = Double(configuration.steps - startStep) * tokensPerStep
        return TrainingSummary(steps: configuration.steps, finalLoss: lastLoss, validationLoss: lastValidation, arithmetic: report,
                               seconds: seconds, tokensPerSecond: seconds > 0 ? trained / seconds : 0,
                               checkpoint: configuration.finalCheckpointDirectory)
    }
}
