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
/// global batch however it is split over micro-batches and ranks. Only rank 0 prints, writes metrics and evaluates;
/// every rank writes its own pieces of each checkpoint, and rank 0 completes it.
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

    /// Rank 0 (or the only rank) does the printing and evaluation, and completes each checkpoint.
    public var isLeader: Bool { (group?.rank ?? 0) == 0 }

    /// Builds the plan, model, optimizer and data for a configuration; with `resume`, restores a checkpoint.
    /// With a `group`, this rank trains its part of every step as the plan says (collective: every rank of the
    /// group must construct its trainer).
    public init(configuration requested: TrainingConfiguration, group: (any ProcessGroup)? = nil, resume: String? = nil,
                display: ProgressDisplay? = nil, timeline: Timeline? = nil) throws {
        try requested.validate()
        // A resume keeps the global batch; the accumulation steps follow the data-parallel size.
        let configuration = resume == nil ? requested : try Trainer.fittingAccumulation(requested, worldSize: group?.size ?? 1)
        agreement = try RunAgreement.establish(configuration, group: group)
        self.configuration = configuration
        self.group = group
        // Every refusal happens here, before the model or the data exist.
        plan = try ParallelPlan(settings: try configuration.parallelSettings(), worldSize: group?.size ?? 1, model: configuration.modelConfiguration.shape)
        let dataParallelRank = plan.mesh.position(along: .dp, of: group?.rank ?? 0)
        // A run that cannot fit is refused now, not by a failed allocation (or the kernel) minutes from now.
        try MemoryEstimate(plan: plan, optimizerStateBytesPerParameter: try ZeROMemoryPlan.OptimizerKind(name: configuration.optimizer).stateBytesPerParameter,
                           microBatchSize: configuration.microBatchSize ?? max(configuration.batch / (plan.dataParallelSize * configuration.accumulateSteps), 1),
                           ranksInProcess: group is LocalProcessGroup ? group?.size ?? 1 : 1).check()
        // With a tokenizer, the leader tokenises into the token cache (when it is not there yet) and the other
        // ranks then map the file it left.
        var leaderDataset: (any TrainingDataset)?
        if configuration.tokenizer != nil, let group, group.size > 1 {
            try Self.agreeOnSuccess(group, otherwise: "another rank could not prepare the tokens of \(configuration.dataPath ?? "the corpus") (its error is reported there)") {
                if group.rank == 0 { leaderDataset = try configuration.makeDataset(display: display) }
            }
        }
        dataset = try leaderDataset ?? configuration.makeDataset(display: (group?.rank ?? 0) == 0 ? display : nil)
        sampler = try DistributedSampler(globalBatch: configuration.batch, worldSize: plan.dataParallelSize, rank: dataParallelRank,
                                         microBatches: configuration.accumulateSteps)
        model = try configuration.makeModel()
        let ranks = group?.size ?? 1, dp = plan.dataParallelSize
        runtime = try plan.build(model: model, world: group, weightDecay: Float(configuration.weightDecay), timeline: timeline,
                                 makeOptimizer: { try configuration.makeOptimizer(for: $0, ranks: ranks, externalGradients: $1) },
                                 makeShardOptimizer: { try configuration.makeShardOptimizer($0, dataParallelSize: dp) })
        schedule = configuration.learningRateSchedule
        lossScaler = LossScaler(try LossScaling(parsing: configuration.lossScale))
        self.display = (group?.rank ?? 0) == 0 ? display : nil
        self.timeline = timeline
        if let resume {
            try restore(from: resume)
        } else if let initFrom = configuration.initFrom {
            // The Hugging Face file read as a checkpoint: each rank reads its part of each weight, as on resume.
            try runtime.loadCheckpoint(from: ShardedCheckpointReader(directory: initFrom, index: try CheckpointIndex(huggingFaceDirectory: initFrom)))
        }
    }

    /// `configuration` with accumulation steps that split the global batch evenly over the data-parallel
    /// ranks the plan for `worldSize` has: unchanged when they already do, else the count nearest to the
    /// configured one that does. Refused, saying what to change, when the data-parallel size does not divide
    /// the batch at all.
    public static func fittingAccumulation(_ configuration: TrainingConfiguration, worldSize: Int) throws -> TrainingConfiguration {
        let plan = try ParallelPlan(settings: try configuration.parallelSettings(), worldSize: worldSize, model: configuration.modelConfiguration.shape)
        let dp = plan.dataParallelSize, batch = configuration.batch
        guard batch % (dp * configuration.accumulateSteps) != 0 else { return configuration }
        guard batch % dp == 0 else {
            throw ConvoyError.invalidConfiguration("the checkpoint's global batch \(batch) cannot be split over \(dp) data-parallel ranks; resume with a --dp (or world size) that divides \(batch)")
        }
        let perRank = batch / dp
        var adjusted = configuration
        adjusted.accumulateSteps = (1...perRank).filter { perRank % $0 == 0 }.min { abs($0 - configuration.accumulateSteps) < abs($1 - configuration.accumulateSteps) }!
        return adjusted
    }

    /// Restores a sharded checkpoint saved under any layout: each rank reads the pieces of what it holds.
    private func restore(from requested: String) throws {
        let directory = try TrainingCheckpoint.resolvedDirectory(requested)
        let state = try TrainingCheckpoint.readState(from: directory)
        var saved = TrainingConfiguration()
        try? TrainingSettings.apply(toml: state.configuration, source: directory + "/trainer.json", to: &saved)
        if state.optimizer == TrainerState.weightsOnly {
            // Imported weights: nothing trained yet under any run's data, seed or optimizer.
            try runtime.loadCheckpoint(from: try ShardedCheckpointReader(directory: directory))
            return
        }
        try configuration.checkSameDataset(as: saved, checkpoint: directory)
        guard state.seed == configuration.seed else {
            throw ConvoyError.incompatible("checkpoint \(directory) was trained with seed \(state.seed), the run uses --seed \(configuration.seed); resume with the same seed")
        }
        guard state.optimizer == configuration.optimizer else {
            throw ConvoyError.incompatible("checkpoint \(directory) holds \(state.optimizer) state, the run uses --optimizer \(configuration.optimizer)")
        }
        // One global sample cursor: the step (and with it the LR schedule) is where the cursor stands in
        // batches of the run's global batch, which must be the checkpoint's.
        guard state.step > 0 ? state.dataPosition == state.step * configuration.batch : true else {
            throw ConvoyError.incompatible("checkpoint \(directory) was trained with a global batch of \(state.dataPosition / max(state.step, 1)), the run uses --batch \(configuration.batch); resume with --batch \(state.dataPosition / max(state.step, 1)) (the number of data-parallel ranks may change: the accumulation steps adjust)")
        }
        let step = state.dataPosition / configuration.batch
        guard step <= configuration.steps else {
            throw ConvoyError.incompatible("checkpoint \(directory) is at step \(step), beyond --steps \(configuration.steps)")
        }
        let reader = try ShardedCheckpointReader(directory: directory)
        try runtime.loadCheckpoint(from: reader)
        if let scale = state.lossScale { lossScaler.restore(scale: scale, goodSteps: state.lossScaleGoodSteps ?? 0) }
        startStep = step
    }

    /// The step training continues from (0, or the resumed checkpoint's step).
    public var firstStep: Int { startStep }

    /// Saves a checkpoint after `step` steps to `directory` (collective): every rank writes its own pieces —
    /// parameter values and optimizer state of what it owns, replicated tensors spread over the replicas —
    /// into one temporary directory; then rank 0 merges the index, writes the trainer state (and, with
    /// `exportWeights`, the Hugging Face export read back from the pieces one tensor at a time) and renames
    /// the directory into place. No rank gathers the model.
    public func saveCheckpoint(afterStep step: Int, to directory: String, exportWeights: Bool = false,
                               failingAt failure: TrainingCheckpoint.SaveStage? = nil) throws {
        let tag = agreement.shardedTemporaryTag(step: step)
        let temporary = TrainingCheckpoint.temporaryDirectoryPath(for: directory, tag: tag)
        try everyRankSucceeds(directory) {
            if isLeader { try TrainingCheckpoint.prepareTemporaryDirectory(for: directory, tag: tag) }
        }
        do {
            try everyRankSucceeds(directory) { try runtime.writeCheckpointShard(into: temporary) }
        } catch {
            if isLeader { try? FileManager.default.removeItem(atPath: temporary) }
            throw error
        }
        try everyRankSucceeds(directory) {
            guard isLeader else { return }
            let manifest = try PlacementManifest(model: model, mesh: plan.mesh).encoded()
            // The tokenizer travels with the weights, so generate, eval and AutoTokenizer read the text as trained.
            let tokenizerFiles = try configuration.tokenizer.map { try TokenizerFiles.files(of: $0) } ?? [:]
            try TrainingCheckpoint.publish(temporary: temporary, ranks: group?.size ?? 1, state: state(afterStep: step), layout: runtime.layoutSummary,
                                           model: model, exportWeights: exportWeights,
                                           extraFiles: tokenizerFiles.merging([PlacementManifest.fileName: manifest]) { _, placement in placement },
                                           to: directory, failingAt: failure)
        }
    }

    /// Runs `body` on this rank, then agrees with every rank on whether all succeeded (collective): a rank whose
    /// part of saving `directory` failed rethrows its error, the others throw one saying so, and none waits
    /// for a rank that gave up.
    private func everyRankSucceeds(_ directory: String, _ body: () throws -> Void) throws {
        try Self.agreeOnSuccess(group, otherwise: "another rank could not write its part of the checkpoint \(directory) (its error is reported there); the previous checkpoint is untouched", body)
    }

    /// Runs `body`, then agrees with every rank of `group` on whether all succeeded (collective): a rank whose
    /// `body` failed rethrows its error, the others throw `otherwise`.
    private static func agreeOnSuccess(_ group: (any ProcessGroup)?, otherwise message: String, _ body: () throws -> Void) throws {
        var failure: Error?
        do { try body() } catch { failure = error }
        if let group, group.size > 1 {
            let failed = Tensor(shape: [1], values: [failure == nil ? 0 : 1])
            try group.allReduce(failed, operation: .max)
            if failure == nil && failed.scalarValue > 0 { throw ConvoyError.io(message) }
        }
        if let failure { throw failure }
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

    /// The layout this run trains under, as `plan.json` records it for `convoy report`.
    public var planSummary: RunPlanSummary {
        let shape = configuration.modelConfiguration
        return RunPlanSummary(worldSize: group?.size ?? 1, mesh: zip(plan.mesh.axes, plan.mesh.sizes).map { .init(axis: $0.rawValue, size: $1) },
                              features: plan.features.sorted().map(\.meaning), layout: runtime.layoutSummary, parameters: model.parameterCount,
                              model: "GPT: \(shape.layers) layers, d_model \(shape.width), \(shape.heads) heads, context \(shape.contextLength), vocab \(shape.vocabularySize)")
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
        let outputLocks = isLeader ? try RunDirectory.claim(for: configuration, resuming: startStep > 0) : []
        defer { withExtendedLifetime(outputLocks) {} }
        if isLeader {
            try AtomicFile.write(Data(TrainingSettings.tomlText(configuration).utf8), to: output + "/config.toml")
            metrics = try MetricsLog(directory: output)
            try planSummary.write(into: output)
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
                var record: [String: Any] = ["step": done, "loss": loss, "lr": learningRate, "tokens_per_s": tokensPerSecond, "grad_norm": norm, "elapsed_s": now]
                if lossScaler.scaling != .none { record["loss_scale"] = Double(lossScaler.scale) }
                try metrics?.write(record)
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
            }
        }

        let seconds = elapsed()
        // Saved from the pieces each rank holds (the Hugging Face export is assembled from them), before the
        // model is gathered for the final evaluation.
        try saveCheckpoint(afterStep: configuration.steps, to: configuration.finalCheckpointDirectory, exportWeights: true)
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
        let trained = Double(configuration.steps - startStep) * tokensPerStep
        return TrainingSummary(steps: configuration.steps, finalLoss: lastLoss, validationLoss: lastValidation, arithmetic: report,
                               seconds: seconds, tokensPerSecond: seconds > 0 ? trained / seconds : 0,
                               checkpoint: configuration.finalCheckpointDirectory)
    }
}
