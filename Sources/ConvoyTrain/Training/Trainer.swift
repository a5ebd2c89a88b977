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

/// The training loop: global batch → this rank's micro-batches → forward/backward with gradient
/// accumulation → (data-parallel reduction) → clip → optimizer step, with metrics, progress, periodic
/// evaluation and checkpoints.
///
/// The loss of each micro-batch is weighted by its share of the global batch's counted targets, so the
/// gradient equals that of the mean loss over the whole global batch however it is split over micro-batches
/// and ranks. With a process group of more than one rank the model is wrapped in ``DataParallel``; only rank 0
/// prints, writes metrics, evaluates and saves checkpoints.
public final class Trainer {
    public let configuration: TrainingConfiguration
    public let model: GPT
    public let optimizer: any Optimizer
    public let dataset: any TrainingDataset
    public let sampler: DistributedSampler
    /// The data-parallel wrapper (nil on one rank, and under ZeRO).
    public let parallel: DataParallel?
    /// The ZeRO distributed optimizer (stages 1–3), or nil.
    public let zero: DistributedOptimizer?
    /// Pipeline parallelism (with data parallelism or ZeRO-1 across pipelines), or nil when pp is 1.
    public let pipeline: PipelineParallel?
    public let group: (any ProcessGroup)?
    private let schedule: any LearningRateSchedule
    private let display: ProgressDisplay?
    private let timeline: Timeline?
    private var startStep = 0
    /// The ranks' agreed configuration and run identity (RunAgreement.swift).
    private let agreement: RunAgreement

    /// Rank 0 (or the only rank) does the printing, evaluation and saving.
    public var isLeader: Bool { (group?.rank ?? 0) == 0 }

    /// Builds the model, optimizer and data for a configuration; with `resume`, restores a checkpoint. With a
    /// `group`, this rank trains its slice of every global batch and gradients are averaged over the group
    /// (collective: every rank of the group must construct its trainer).
    public init(configuration: TrainingConfiguration, group: (any ProcessGroup)? = nil, resume: String? = nil,
                display: ProgressDisplay? = nil, timeline: Timeline? = nil) throws {
        try configuration.validate()
        agreement = try RunAgreement.establish(configuration, group: group)
        self.configuration = configuration
        self.group = group
        let ranks = group?.size ?? 1
        let pp = configuration.pipeline.stages
        // Without --dp, the ranks that are not pipeline stages are data-parallel replicas.
        let dp = configuration.dp ?? max(1, ranks / pp)
        guard dp * pp == ranks else {
            throw ConvoyError.invalidConfiguration("world size \(ranks) is not dp·pp·tp = \(dp)·\(pp)·1; change --dp, --pp or the number of ranks")
        }
        let mesh = try DeviceMesh(dp: dp, pp: pp, tp: 1)
        let dataParallelRank = mesh.position(along: .dp, of: group?.rank ?? 0)
        if pp > 1 { try configuration.validatePipeline(dataParallelSize: dp) }
        try configuration.validateMicroBatchSize(dataParallelSize: dp)
        dataset = try configuration.makeDataset()
        sampler = try DistributedSampler(globalBatch: configuration.batch, worldSize: dp, rank: dataParallelRank, microBatches: configuration.accumulateSteps)
        model = try GPT(configuration.modelConfiguration, seed: configuration.seed)
        if let group, pp > 1 {
            pipeline = try PipelineParallel(model: model, world: group, options: configuration.pipeline, microBatches: configuration.accumulateSteps,
                                            zeroStage: configuration.zeroStage, dataParallelOptions: configuration.ddp,
                                            weightDecay: Float(configuration.weightDecay), timeline: timeline,
                                            makeOptimizer: { configuration.makeOptimizer(for: $0, ranks: ranks, externalGradients: $1) },
                                            makeShardOptimizer: { configuration.makeShardOptimizer($0, dataParallelSize: dp) })
            zero = nil
            parallel = nil
            optimizer = pipeline!.optimizer
        } else if let group, group.size > 1, configuration.zeroStage > 0 {
            pipeline = nil
            let distributed = try DistributedOptimizer(module: model, group: group, stage: configuration.zeroStage, options: configuration.ddp,
                                                       weightDecay: Float(configuration.weightDecay)) { configuration.makeShardOptimizer($0, dataParallelSize: dp) }
            zero = distributed
            parallel = nil
            optimizer = distributed.optimizer
        } else {
            pipeline = nil
            zero = nil
            parallel = group.map { $0.size > 1 } == true
                ? try DataParallel(module: model, group: group!, options: configuration.ddp, timeline: timeline) : nil
            optimizer = configuration.makeOptimizer(for: model, ranks: ranks, externalGradients: parallel?.fusedGradients != nil)
        }
        schedule = configuration.learningRateSchedule
        self.display = (group?.rank ?? 0) == 0 ? display : nil
        self.timeline = timeline
        if let resume { try restore(from: resume) }
    }

    private func restore(from directory: String) throws {
        var optimizerFile = TrainingCheckpoint.optimizerFileName
        if let pipeline, let group {
            let indexPath = try TrainingCheckpoint.resolvedDirectory(directory) + "/" + Self.pipelineIndexFileName
            guard let index = FileManager.default.contents(atPath: indexPath),
                  let saved = try? JSONSerialization.jsonObject(with: index) as? [String: String], let layout = saved["layout"] else {
                throw ConvoyError.incompatible("checkpoint \(directory) was not written by a pipeline run (no readable \(Self.pipelineIndexFileName)); resume it with the parallel layout it was saved with")
            }
            guard layout == pipeline.layoutDescription else {
                throw ConvoyError.incompatible("checkpoint \(directory) was saved with \(layout); this run uses \(pipeline.layoutDescription). Resume with the same --pp, --dp, --virtual-stages, --stage-layers and --zero-stage (resharding is not supported yet)")
            }
            optimizerFile = TrainingCheckpoint.shardFileName(rank: group.rank, of: group.size)
        } else if let zero {
            let indexPath = try TrainingCheckpoint.resolvedDirectory(directory) + "/" + Self.zeroIndexFileName
            guard let index = FileManager.default.contents(atPath: indexPath) else {
                throw ConvoyError.incompatible("checkpoint \(directory) was not written under ZeRO (no \(Self.zeroIndexFileName)); resume it with --zero-stage 0")
            }
            try zero.checkLayout(index, source: indexPath)
            optimizerFile = TrainingCheckpoint.shardFileName(rank: zero.group.rank, of: zero.group.size)
        }
        // Stage 3 keeps only shards: the loaded weights are written into the gathered model on every rank, and
        // each rank takes its shard back from them.
        try zero?.gatherFullParameters()
        pipeline?.stage.restoreUnownedParameters()
        let contents = try TrainingCheckpoint.load(from: directory, into: model, optimizerFile: optimizerFile)
        pipeline?.stage.releaseUnownedParameters()
        zero?.releaseFullParameters(copyingBack: true)
        let state = contents.state
        var saved = TrainingConfiguration()
        try? TrainingSettings.apply(toml: state.configuration, source: directory + "/trainer.json", to: &saved)
        try configuration.checkSameDataset(as: saved, checkpoint: directory)
        let runningStage = zero?.stage ?? pipeline?.zero?.stage ?? 0
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
        startStep = state.step
    }

    /// The step training continues from (0, or the resumed checkpoint's step).
    public var firstStep: Int { startStep }

    /// Name of the ZeRO layout index in a checkpoint.
    static let zeroIndexFileName = "zero.json"
    /// Name of the pipeline layout index in a checkpoint.
    static let pipelineIndexFileName = "pipeline.json"

    /// Saves a checkpoint (collective). Rank 0 writes the model and the trainer state; the optimizer state is
    /// written whole by rank 0, or under ZeRO as one shard file per rank plus a layout index, all assembled in
    /// one temporary directory before it is renamed into place. Under ZeRO stage 3 the parameters are left
    /// gathered (the caller releases them when training goes on).
    private func saveCheckpoint(afterStep step: Int, to directory: String) throws {
        try zero?.gatherFullParameters()
        // The whole model is written by rank 0, which collects the other stages' parameters first.
        try pipeline?.collectModel()
        let index: (name: String, contents: Data)?
        if let zero {
            index = (Self.zeroIndexFileName, try zero.layoutIndex())
        } else if let pipeline {
            index = (Self.pipelineIndexFileName, try JSONSerialization.data(withJSONObject: ["layout": pipeline.layoutDescription], options: [.sortedKeys]))
        } else {
            index = nil
        }
        guard let index, let group else {
            if isLeader { try TrainingCheckpoint.save(model: model, optimizer: optimizer, state: state(afterStep: step), to: directory) }
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
                                        extraFiles: [index.name: index.contents])
        }
        try group.barrier()
    }

    /// The trainer state after `step` completed steps.
    func state(afterStep step: Int) -> TrainerState {
        TrainerState(step: step, seed: configuration.seed, dataPosition: step * configuration.batch,
                     configuration: TrainingSettings.tomlText(configuration), optimizer: configuration.optimizer)
    }

    /// Runs one optimizer step; returns (mean loss over the global batch, gradient norm before clipping).
    public func trainStep(_ step: Int) throws -> (loss: Double, gradientNorm: Double) {
        optimizer.learningRate = schedule.learningRate(at: step)
        if let pipeline { return try pipelineStep(step, pipeline) }
        let context = configuration.context
        let rank = group.map { $0.worldRanks[$0.rank] } ?? 0
        let globalIndices = (step * configuration.batch)..<((step + 1) * configuration.batch)
        // Every rank needs the whole global batch's target count for the weights; its own examples are taken
        // from the same list rather than generated again.
        let globalExamples = globalIndices.map { dataset.trainingExample($0) }
        let totalCounted = globalExamples.reduce(0) { $0 + $1.countedTargets }
        // Data parallelism averages gradients over ranks, so each rank's share is scaled up by the rank count.
        let reducingGroup = parallel?.group ?? zero?.group
        let rankScale = Float(reducingGroup?.size ?? 1)
        var loss = 0.0
        for microBatch in 0..<sampler.microBatches {
            let examples = sampler.indices(step: step, microBatch: microBatch).map { globalExamples[$0 - globalIndices.lowerBound] }
            let counted = examples.reduce(0) { $0 + $1.countedTargets }
            let weight = Float(counted) / Float(max(totalCounted, 1))
            let forward = ForwardContext(training: true, seed: configuration.seed, step: step, firstSequence: sampler.firstSequence(microBatch: microBatch))
            let compute = {
                let microLoss = self.measure("forward", rank: rank) {
                    self.model.loss(examples.flatMap(\.inputs), targets: examples.flatMap(\.targets), batch: examples.count, time: context, context: forward)
                }
                self.measure("backward", rank: rank) { (microLoss * (weight * rankScale)).backward() }
                loss += Double(microLoss.scalarValue) * Double(weight)
            }
            if let parallel, microBatch < sampler.microBatches - 1 { parallel.withoutSynchronization(compute) } else { compute() }
            try zero?.finishBackward()
        }
        try parallel?.finishGradientSynchronization()
        try zero?.finishGradientSynchronization()
        if let group = reducingGroup {
            let total = Tensor(shape: [1], values: [Float(loss)])
            try group.allReduce(total, operation: .sum)
            loss = Double(total.scalarValue)
        }
        let norm: Double
        if let zero {
            // The averaged gradient exists only as shards: the norm is reduced over ranks.
            norm = configuration.gradClip > 0 ? try zero.clipGradients(maxNorm: Float(configuration.gradClip)) : try zero.globalGradientNorm()
            try measure("optimizer step", rank: rank) { try zero.step() }
            zero.zeroGradients()
        } else {
            let parameters = model.parameters
            norm = configuration.gradClip > 0
                ? GradientClipping.clip(parameters, maxNorm: Float(configuration.gradClip))
                : GradientClipping.globalNorm(parameters)
            measure("optimizer step", rank: rank) { optimizer.step() }
            if let parallel { parallel.zeroGradients() } else { optimizer.zeroGradients() }
        }
        return (loss, norm)
    }

    /// One step of the pipeline: this rank's instruction list over the micro-batches of its data-parallel slice.
    private func pipelineStep(_ step: Int, _ pipeline: PipelineParallel) throws -> (loss: Double, gradientNorm: Double) {
        let globalIndices = (step * configuration.batch)..<((step + 1) * configuration.batch)
        let globalExamples = globalIndices.map { dataset.trainingExample($0) }
        let totalCounted = max(globalExamples.reduce(0) { $0 + $1.countedTargets }, 1)
        let replicas = pipeline.mesh.dp
        let result = try pipeline.trainStep(maxGradientNorm: Float(configuration.gradClip)) { microBatch in
            let examples = sampler.indices(step: step, microBatch: microBatch).map { globalExamples[$0 - globalIndices.lowerBound] }
            let weight = Double(examples.reduce(0) { $0 + $1.countedTargets }) / Double(totalCounted)
            return PipelineExecutor.MicroBatch(tokens: examples.flatMap(\.inputs), targets: examples.flatMap(\.targets), batch: examples.count,
                                               time: configuration.context, lossScale: Float(weight) * Float(replicas), lossWeight: weight,
                                               context: ForwardContext(training: true, seed: configuration.seed, step: step,
                                                                       firstSequence: sampler.firstSequence(microBatch: microBatch)))
        }
        return (result.loss, result.gradientNorm)
    }

    private func measure<Result>(_ name: String, rank: Int, _ body: () throws -> Result) rethrows -> Result {
        guard let timeline else { return try body() }
        return try timeline.measure(name, category: name, rank: rank, body)
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
        try display?.message("training \(model.parameterCount) parameters on \(dataset.summary); \(configuration.steps - startStep) steps of \(configuration.batch) × \(configuration.context) tokens" + (parallel.map { "; data parallel over \($0.group.size) ranks, \($0.bucketCount) buckets" } ?? "")
            + (zero.map { "; ZeRO stage \($0.stage) over \($0.group.size) ranks, \($0.buffer.buckets.count) buckets" } ?? "")
            + (pipeline.map { "; pipeline of \($0.mesh.pp) stages (layers \($0.stage.partition.stageLayers.map(String.init).joined(separator: "/"))), \($0.schedule.kind.rawValue), \(configuration.accumulateSteps) micro-batches, \($0.mesh.dp) replicas" } ?? ""))

        for step in startStep..<configuration.steps {
            let (loss, norm) = try trainStep(step)
            guard loss.isFinite else {
                throw ConvoyError.invalidConfiguration("the loss became \(loss) at step \(step + 1); lower --lr (now \(configuration.learningRate)) or enable --grad-clip")
            }
            lastLoss = loss
            windowSteps += 1
            let now = elapsed()
            if now - windowStart > 0 { tokensPerSecond = Double(windowSteps) * tokensPerStep / (now - windowStart) }
            if windowSteps >= 20 { windowStart = now; windowSteps = 0 }
            let done = step + 1
            let remaining = Double(configuration.steps - done) * tokensPerStep / max(tokensPerSecond, 1e-9)
            let learningRate = Double(optimizer.learningRate)
            try display?.step(done, of: configuration.steps, loss: loss, tokensPerSecond: tokensPerSecond, learningRate: learningRate, elapsed: now, remaining: remaining)
            if done % configuration.logEvery == 0 || done == configuration.steps {
                try metrics?.write(["step": done, "loss": loss, "lr": learningRate, "tokens_per_s": tokensPerSecond, "grad_norm": norm, "elapsed_s": now])
            }
            if configuration.evalEvery > 0 && done % configuration.evalEvery == 0 && done < configuration.steps {
                // Rank 0 alone evaluates: every rank gathers the parameters first (collective under ZeRO-3).
                try zero?.gatherFullParameters()
                try pipeline?.collectModel()
                defer {
                    zero?.releaseFullParameters()
                    pipeline?.releaseCollectedModel()
                }
                if isLeader, let validation = validationLoss(batches: configuration.evalBatches) {
                    lastValidation = validation
                    try metrics?.write(["step": done, "val_loss": validation, "elapsed_s": elapsed()])
                    try display?.message(String(format: "step %d: validation loss %.4f", done, validation))
                }
                try group?.barrier()
            }
            if configuration.checkpointEvery > 0 && done % configuration.checkpointEvery == 0 && done < configuration.steps {
                try saveCheckpoint(afterStep: done, to: configuration.periodicCheckpointDirectory)
                zero?.releaseFullParameters()
                pipeline?.releaseCollectedModel()
            }
        }

        let seconds = elapsed()
        // From here on the model's parameters are complete on every rank (also after run() returns).
        try zero?.gatherFullParameters()
        try pipeline?.collectModel()
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
