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

    public init(schedule: any StepSchedule, synchronizer: any GradientSynchronizer, mesh: DeviceMesh, world: (any ProcessGroup)?,
                tensorParallel: TensorParallelism? = nil) {
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
        /// The gradient norm before clipping (the same on every rank).
        public var gradientNorm: Double
        /// The most forwards stashed at once on this rank.
        public var peakStashed: Int
    }

    /// Runs one training step: the schedule's forward/backward over `load`'s micro-batches, then synchronize,
    /// clip to `maxGradientNorm` (> 0), step and zero, where the schedule says.
    public func trainStep(maxGradientNorm: Float, load: (Int) throws -> MicroBatch) throws -> StepResult {
        var norm = 0.0
        func run() throws -> (weightedLoss: Double, peakStashed: Int) {
            try schedule.run(load: load, synchronizer: synchronizer,
                             reduceGradients: { norm = try synchronizeAndClip(maxNorm: maxGradientNorm) },
                             optimizerStep: {
                                 try synchronizer.step()
                                 synchronizer.zeroGradients()
                             })
        }
        let result = try tensorParallel.map { try $0.run(run) } ?? run()
        // The tensor-parallel ranks of a replica computed the same loss; one of them counts it.
        let counted = (tensorCoordinates[MeshAxis.tp.rawValue] ?? 0) == 0 ? result.weightedLoss : 0
        return StepResult(loss: try sumOverWorld(counted), gradientNorm: norm, peakStashed: result.peakStashed)
    }

    private func synchronizeAndClip(maxNorm: Float) throws -> Double {
        try synchronizer.finishGradientSynchronization()
        let norm = try gradientNorm()
        let scale = Double(maxNorm) / (norm + 1e-6)
        if maxNorm > 0 && scale < 1 { synchronizer.scaleGradients(by: Float(scale)) }
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
        try tensorParallel?.gatherWholeParameters()
    }

    /// Undoes ``gatherFullModel()``; with `copyingBack`, each rank first takes its part from the full parameters.
    public func releaseFullModel(copyingBack: Bool = false) {
        tensorParallel?.releaseWholeParameters(copyingBack: copyingBack)
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
        tensorParallel?.allocateWholeParameters()
        let result = try body()
        tensorParallel?.releaseWholeParameters(copyingBack: true)
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
