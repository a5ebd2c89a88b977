import ConvoyComm
import ConvoyNN
import ConvoyTensor

/// Runs forward and backward over this rank's micro-batches of one step — plain gradient accumulation, or a
/// pipeline schedule's instruction list — with one signature (Megatron's `forward_backward_func`).
///
/// The schedule decides *when* the step's gradients are complete and calls `reduceGradients` then, and
/// `optimizerStep` where the update belongs; what those do (synchronize, clip, step) is the caller's, written
/// once in ``ParallelRuntime``.
public protocol StepSchedule: AnyObject {
    /// Micro-batches per step on this rank.
    var microBatches: Int { get }
    /// The module whose parameters this rank trains (the whole model, or a pipeline stage).
    var module: Module { get }
    /// One line for people.
    var summary: String { get }

    /// Runs one step. `load` supplies micro-batch i of this rank's data-parallel slice. Returns Σ loss × weight
    /// over the micro-batches whose loss this rank computed and counts (summed over the world, every micro-batch
    /// of the global batch is counted once), and the most forwards stashed at once.
    func run(load: (Int) throws -> MicroBatch, synchronizer: any GradientSynchronizer,
             reduceGradients: () throws -> Void, optimizerStep: () throws -> Void) throws -> (weightedLoss: Double, peakStashed: Int)

    /// Makes the whole model readable on world rank 0 (collective): before evaluation or saving.
    func gatherFullModel() throws
    /// Undoes ``gatherFullModel()``.
    func releaseFullModel()
}
