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

    public init(schedule: any StepSchedule, synchronizer: any GradientSynchronizer, mesh: DeviceMesh, world: (any ProcessGroup)?) {
        self.schedule = schedule
        self.synchronizer = synchronizer
        self.mesh = mesh
        self.world = world
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
        let result = try schedule.run(load: load, synchronizer: synchronizer,
                                      reduceGradients: {
                                          norm = try synchronizeAndClip(maxNorm: maxGradientNorm, lossScale: lossScaler?.scale ?? 1)
                                          skipped = !norm.isFinite && (lossScaler?.skipsNonFiniteSteps ?? false)
                                      },
                                      optimizerStep: {
                                          if !skipped { try synchronizer.step() }
                                          synchronizer.zeroGradients()
                                      })
        lossScaler?.update(gradientsFinite: norm.isFinite)
        var step = StepResult(loss: try sumOverWorld(result.weightedLoss), gradientNorm: norm, peakStashed: result.peakStashed)
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

    /// Makes every parameter of the whole model readable on world rank 0 (collective): before evaluation or
    /// saving. Undo with ``releaseFullModel(copyingBack:)``.
    public func gatherFullModel() throws {
        try synchronizer.gatherFullParameters()
        try schedule.gatherFullModel()
    }

    /// Undoes ``gatherFullModel()``; with `copyingBack`, each rank first takes its part from the full parameters.
    public func releaseFullModel(copyingBack: Bool = false) {
        synchronizer.releaseFullParameters(copyingBack: copyingBack)
        schedule.releaseFullModel()
    }

    /// Runs `body`, which writes the same values into the whole model on every rank (loading a checkpoint),
    /// with every parameter present; afterwards each rank keeps only its part (its ZeRO-3 shard, its stage's
    /// parameters) of what was written (collective).
    public func loadingWholeModel<Result>(_ body: () throws -> Result) throws -> Result {
        try synchronizer.gatherFullParameters()
        schedule.restoreWholeModelMemory()
        defer { schedule.releaseUnownedModelMemory() }
        let result = try body()
        synchronizer.releaseFullParameters(copyingBack: true)
        return result
    }

    /// How the optimizer state of a checkpoint is laid out: nil when one rank writes it whole, else the index file
    /// (name and contents) saved beside one optimizer shard per rank.
    public func checkpointLayoutIndex() throws -> (name: String, contents: Data)? {
        if let layout = schedule.layoutDescription(zeroStage: synchronizer.zeroStage) {
            return (Self.pipelineIndexFileName, try JSONSerialization.data(withJSONObject: ["layout": layout], options: [.sortedKeys]))
        }
        return try synchronizer.checkpointLayoutIndex().map { (Self.zeroIndexFileName, $0) }
    }

    /// Throws unless the checkpoint in `directory` was saved under this runtime's optimizer-state layout.
    public func checkCheckpointLayout(in directory: String) throws {
        if let layout = schedule.layoutDescription(zeroStage: synchronizer.zeroStage) {
            let indexPath = directory + "/" + Self.pipelineIndexFileName
            guard let index = FileManager.default.contents(atPath: indexPath),
                  let saved = try? JSONSerialization.jsonObject(with: index) as? [String: String], let savedLayout = saved["layout"] else {
                throw ConvoyError.incompatible("checkpoint \(directory) was not written by a pipeline run (no readable \(Self.pipelineIndexFileName)); resume it with the parallel layout it was saved with")
            }
            guard savedLayout == layout else {
                throw ConvoyError.incompatible("checkpoint \(directory) was saved with \(savedLayout); this run uses \(layout). Resume with the same --pp, --dp, --virtual-stages, --stage-layers and --zero-stage (resharding is not supported yet)")
            }
        } else if synchronizer.zeroStage > 0 {
            let indexPath = directory + "/" + Self.zeroIndexFileName
            guard let index = FileManager.default.contents(atPath: indexPath) else {
                throw ConvoyError.incompatible("checkpoint \(directory) was not written under ZeRO (no \(Self.zeroIndexFileName)); resume it with --zero-stage 0")
            }
            try synchronizer.checkLayout(index, source: indexPath)
        }
    }

    /// Name of the ZeRO layout index in a checkpoint.
    public static let zeroIndexFileName = "zero.json"
    /// Name of the pipeline layout index in a checkpoint.
    public static let pipelineIndexFileName = "pipeline.json"
}
