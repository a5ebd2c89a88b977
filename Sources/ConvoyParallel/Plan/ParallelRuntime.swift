import ConvoyComm
import ConvoyNN
import ConvoyTensor
import Foundation

/// One rank's running plan: its step schedule and gradient synchronizer, and the step between them —
/// synchronize, one norm over the whole mesh, clip, step, zero — written once for every strategy.
public final class ParallelRuntime {
    public let schedule: any StepSchedule
    public let synchronizer: any GradientSynchronizer
    public let mesh: DeviceMesh
    /// The world (nil: one process, one rank).
    public let world: (any ProcessGroup)?
    /// This rank's mesh coordinates along the axes that replicate or shard tensors (pp partitions the model's
    /// parameters among stages instead: a stage's parameters live on that stage only).
    private let tensorCoordinates: [String: Int]
    /// Tensor parallelism of this rank's model (nil with tp 1).
    public let tensorParallel: TensorParallelism?
    /// bf16 compute copies made for each step, when the parameters compute in bf16 and the synchronizer keeps
    /// them as their own fp32 masters (every layout without ZeRO; ZeRO gathers its copies in bf16 itself).
    private let computeCopies: BFloat16ComputeCopies?

    /// `parameterDType`: the element type the parameters compute in (``DataParallelOptions/parameterDType``):
    /// with bfloat16, every parameter computes with its fp32 master rounded to bf16.
    public init(schedule: any StepSchedule, synchronizer: any GradientSynchronizer, mesh: DeviceMesh, world: (any ProcessGroup)?,
                tensorParallel: TensorParallelism? = nil, parameterDType: DType = .float32) throws {
        if parameterDType == .bfloat16, let replicated = synchronizer as? any ReplicatedGradients {
            computeCopies = try BFloat16ComputeCopies(parameters: replicated.module.parameters)
        } else {
            computeCopies = nil
        }
        self.schedule = schedule
        self.synchronizer = synchronizer
        self.mesh = mesh
        self.world = world
        self.tensorParallel = tensorParallel
        let rank = world?.rank ?? 0
        var coordinates: [String: Int] = [:]
        for axis in mesh.axes where axis != .pp { coordinates[axis.rawValue] = mesh.coordinate(of: rank, along: axis) }
        tensorCoordinates = coordinates
    }

    /// The optimizer the synchronizer steps (the caller sets its learning rate).
    public var optimizer: any Optimizer { synchronizer.optimizer }

    /// What one step did.
    public struct StepResult {
        /// The mean loss over the global batch (the same on every rank).
        public var loss: Double
        /// The gradient norm before clipping (the same on every rank), unscaled by the loss scale.
        public var gradientNorm: Double
        /// The most forwards stashed at once on this rank.
        public var peakStashed: Int
        /// Whether the optimizer step was skipped because the gradients were not finite (decided alike on
        /// every rank; only with loss scaling).
        public var skipped = false
    }

    /// Runs one training step: the schedule's forward/backward over `load`'s micro-batches, then synchronize,
    /// clip to `maxGradientNorm` (> 0), step and zero, where the schedule says.
    ///
    /// With a `lossScaler`, `load`'s micro-batches carry losses already multiplied by its scale: the gradients
    /// are divided by it before clipping and the step, and a step whose gradients hold an Inf or NaN anywhere
    /// on the mesh is skipped on every rank (the scaler is then told so). The decision needs no collective of
    /// its own: the squared gradient norm is summed over the world whenever ranks hold different gradients, and a
    /// non-finite element makes every rank's sum non-finite; where they hold the same (replicated, already
    /// all-reduced) gradients, every rank sees the same value.
    public func trainStep(maxGradientNorm: Float, lossScaler: LossScaler? = nil, load: (Int) throws -> MicroBatch) throws -> StepResult {
        var norm = 0.0
        var skipped = false
        // The step computes with bf16 copies of the masters, which are back in place for the optimizer step (and
        // whenever the step ends, also by an error).
        computeCopies?.roundParameters()
        defer { computeCopies?.restoreMasters() }
        func run() throws -> (weightedLoss: Double, peakStashed: Int) {
            try schedule.run(load: load, synchronizer: synchronizer,
                             reduceGradients: {
                                 norm = try synchronizeAndClip(maxNorm: maxGradientNorm, lossScale: lossScaler?.scale ?? 1)
                                 skipped = !norm.isFinite && (lossScaler?.skipsNonFiniteSteps ?? false)
                             },
                             optimizerStep: {
                                 computeCopies?.restoreMasters()
                                 if !skipped { try synchronizer.step() }
                                 synchronizer.zeroGradients()
                             })
        }
        let result = try tensorParallel.map { try $0.run(run) } ?? run()
        lossScaler?.update(gradientsFinite: norm.isFinite)
        // The tensor-parallel ranks of a replica computed the same loss; one of them counts it.
        let counted = (tensorCoordinates[MeshAxis.tp.rawValue] ?? 0) == 0 ? result.weightedLoss : 0
        var step = StepResult(loss: try sumOverWorld(counted), gradientNorm: norm, peakStashed: result.peakStashed)
        step.skipped = skipped
        return step
    }

    /// Waits for the gradients, divides them by the loss scale and clips them; returns their (unscaled) norm.
    private func synchronizeAndClip(maxNorm: Float, lossScale: Float) throws -> Double {
        try synchronizer.finishGradientSynchronization()
        let norm = try gradientNorm() / Double(lossScale)
        guard norm.isFinite else { return norm }
        let clip = Double(maxNorm) / (norm + 1e-6)
        // One pass over the gradients for both; a power-of-two scale divides exactly.
        let factor = (maxNorm > 0 && clip < 1 ? Float(clip) : 1) / lossScale
        if factor != 1 { synchronizer.scaleGradients(by: factor) }
        return norm
    }

    /// The L2 norm of the step's gradient over the whole mesh, every element counted once: a rank counts a
    /// parameter's final gradient only where its placement says it is the copy to count (position 0 of every
    /// axis it is replicated along — ZeRO's gradients are shards along dp — and the primary copy of a shared
    /// weight), and the counts are summed over the world. When no axis holds distinct gradients (one rank, or
    /// DDP alone), every rank's own gradients are the whole gradient and nothing is communicated.
    public func gradientNorm() throws -> Double {
        let alongDataParallel = synchronizer.gradientPlacementAlongDataParallel
        let distinct = mesh.axes.contains { axis in
            mesh.size(of: axis) > 1 && (axis != .dp || alongDataParallel != .replicate)
        }
        guard distinct, let world, world.size > 1 else {
            return synchronizer.squaredNorm { $0.placement.isPrimaryCopy }.squareRoot()
        }
        let coordinates = tensorCoordinates
        let local = synchronizer.squaredNorm { $0.placement.countsOnce(at: coordinates, overriding: [MeshAxis.dp.rawValue: alongDataParallel]) }
        return try sumOverWorld(local).squareRoot()
    }

    /// Σ over the world's ranks of `value` (itself with one rank).
    public func sumOverWorld(_ value: Double) throws -> Double {
        guard let world, world.size > 1 else { return value }
        let total = Tensor(shape: [1], values: [Float(value)])
        try world.allReduce(total, operation: .sum)
        return Double(total.scalarValue)
    }

    /// Makes every parameter of the whole model readable on world rank 0 (collective): before evaluation
    /// (checkpoints need no gather: each rank writes what it holds). Undo with ``releaseFullModel(copyingBack:)``.
    public func gatherFullModel() throws {
        try synchronizer.gatherFullParameters()
        try schedule.gatherFullModel()
        try tensorParallel?.gatherWholeParameters()
    }

    /// Undoes ``gatherFullModel()``; with `copyingBack`, each rank first takes its part from the full parameters.
    public func releaseFullModel(copyingBack: Bool = false) {
        tensorParallel?.releaseWholeParameters(copyingBack: copyingBack)
        synchronizer.releaseFullParameters(copyingBack: copyingBack)
        schedule.releaseFullModel()
    }

    /// The layout in words, for people (recorded in a checkpoint's index): the mesh, the synchronizer and the
    /// step schedule.
    public var layoutSummary: String {
        "mesh " + zip(mesh.axes, mesh.sizes).map { "\($0.rawValue) \($1)" }.joined(separator: " × ") + "; \(synchronizer.summary); \(schedule.summary)"
    }
}
