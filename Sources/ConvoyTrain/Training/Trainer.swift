import ConvoyNN
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

/// The single-process training loop: global batch → micro-batches → forward/backward with gradient
/// accumulation → clip → optimizer step, with metrics, progress, periodic evaluation and checkpoints.
///
/// The loss of each micro-batch is weighted by its share of the global batch's counted targets, so the
/// gradient equals that of the mean loss over the whole global batch however it is split.
public final class Trainer {
    public let configuration: TrainingConfiguration
    public let model: GPT
    public let optimizer: any Optimizer
    public let dataset: any TrainingDataset
    public let sampler: DistributedSampler
    private let schedule: any LearningRateSchedule
    private let display: ProgressDisplay?
    private var startStep = 0

    /// Builds the model, optimizer and data for a configuration; with `resume`, restores a checkpoint.
    public init(configuration: TrainingConfiguration, resume: String? = nil, display: ProgressDisplay? = nil) throws {
        try configuration.validate()
        self.configuration = configuration
        dataset = try configuration.makeDataset()
        model = try GPT(configuration.modelConfiguration, seed: configuration.seed)
        optimizer = configuration.makeOptimizer(for: model)
        sampler = try DistributedSampler(globalBatch: configuration.batch, microBatches: configuration.accumulateSteps)
        schedule = configuration.learningRateSchedule
        self.display = display
        if let resume { try restore(from: resume) }
    }

    private func restore(from directory: String) throws {
        let contents = try TrainingCheckpoint.load(from: directory, into: model)
        let state = contents.state
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

    /// The trainer state after `step` completed steps.
    func state(afterStep step: Int) -> TrainerState {
        TrainerState(step: step, seed: configuration.seed, dataPosition: step * configuration.batch,
                     configuration: TrainingSettings.tomlText(configuration), optimizer: configuration.optimizer)
    }

    /// Runs one optimizer step; returns (mean loss over the global batch, gradient norm before clipping).
    public func trainStep(_ step: Int) -> (loss: Double, gradientNorm: Double) {
        optimizer.learningRate = schedule.learningRate(at: step)
        let context = configuration.context
        let globalIndices = (step * configuration.batch)..<((step + 1) * configuration.batch)
        let totalCounted = globalIndices.reduce(0) { $0 + dataset.trainingExample($1).countedTargets }
        var loss = 0.0
        for microBatch in 0..<sampler.microBatches {
            let examples = sampler.indices(step: step, microBatch: microBatch).map { dataset.trainingExample($0) }
            let counted = examples.reduce(0) { $0 + $1.countedTargets }
            guard counted > 0 else { continue }
            let weight = Float(counted) / Float(max(totalCounted, 1))
            let forward = ForwardContext(training: true, seed: configuration.seed, step: step, firstSequence: sampler.firstSequence(microBatch: microBatch))
            let microLoss = model.loss(examples.flatMap(\.inputs), targets: examples.flatMap(\.targets), batch: examples.count, time: context, context: forward)
            (microLoss * weight).backward()
            loss += Double(microLoss.scalarValue) * Double(weight)
        }
        let parameters = model.parameters
        let norm = configuration.gradClip > 0
            ? GradientClipping.clip(parameters, maxNorm: Float(configuration.gradClip))
            : GradientClipping.globalNorm(parameters)
        optimizer.step()
        optimizer.zeroGradients()
        return (loss, norm)
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
        try FileManager.default.createDirectory(atPath: output, withIntermediateDirectories: true)
        try AtomicFile.write(Data(TrainingSettings.tomlText(configuration).utf8), to: output + "/config.toml")
        let metrics = try MetricsLog(directory: output)
        let tokensPerStep = Double(configuration.batch * configuration.context)
        let start = DispatchTime.now().uptimeNanoseconds
        func elapsed() -> Double { Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9 }
        var windowStart = 0.0, windowSteps = 0
        var tokensPerSecond = 0.0
        var lastLoss = Double.nan, lastValidation: Double?
        display?.message("training \(model.parameterCount) parameters on \(dataset.summary); \(configuration.steps - startStep) steps of \(configuration.batch) × \(configuration.context) tokens")

        for step in startStep..<configuration.steps {
            let (loss, norm) = trainStep(step)
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
            display?.step(done, of: configuration.steps, loss: loss, tokensPerSecond: tokensPerSecond, learningRate: learningRate, elapsed: now, remaining: remaining)
            if done % configuration.logEvery == 0 || done == configuration.steps {
                metrics.write(["step": done, "loss": loss, "lr": learningRate, "tokens_per_s": tokensPerSecond, "grad_norm": norm, "elapsed_s": now])
            }
            if configuration.evalEvery > 0 && done % configuration.evalEvery == 0 && done < configuration.steps, let validation = validationLoss(batches: configuration.evalBatches) {
                lastValidation = validation
                metrics.write(["step": done, "val_loss": validation, "elapsed_s": elapsed()])
                display?.message(String(format: "step %d: validation loss %.4f", done, validation))
            }
            if configuration.checkpointEvery > 0 && done % configuration.checkpointEvery == 0 && done < configuration.steps {
                try TrainingCheckpoint.save(model: model, optimizer: optimizer, state: state(afterStep: done), to: configuration.periodicCheckpointDirectory)
            }
        }

        let seconds = elapsed()
        if let validation = validationLoss(batches: configuration.evalBatches) {
            lastValidation = validation
            metrics.write(["step": configuration.steps, "val_loss": validation, "elapsed_s": seconds])
        }
        var report: ArithmeticReport?
        if let arithmetic = dataset as? ArithmeticDataset {
            report = try ArithmeticEvaluator.evaluate(model: model, problems: arithmetic.heldOutProblems)
            metrics.write(["step": configuration.steps, "accuracy": report!.accuracy, "problems": report!.problems])
        }
        try TrainingCheckpoint.save(model: model, optimizer: optimizer, state: state(afterStep: configuration.steps), to: configuration.finalCheckpointDirectory)
        let trained = Double(configuration.steps - startStep) * tokensPerStep
        return TrainingSummary(steps: configuration.steps, finalLoss: lastLoss, validationLoss: lastValidation, arithmetic: report,
                               seconds: seconds, tokensPerSecond: seconds > 0 ? trained / seconds : 0,
                               checkpoint: configuration.finalCheckpointDirectory)
    }
}
