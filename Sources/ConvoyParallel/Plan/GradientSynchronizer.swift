import ConvoyComm
import ConvoyNN
import ConvoyTensor
import Foundation

/// What turns this rank's local gradients into the step's gradients and applies the optimizer: none (one
/// data-parallel rank), DDP (ZeRO stage 0) or ZeRO stages 1–3. A ``StepSchedule`` runs forward and backward
/// through it; ``ParallelRuntime`` clips and steps through it. No code outside a synchronizer knows which kind
/// it is.
///
/// The calls of one training step, in order:
/// 1. ``backward(synchronizing:_:)`` around each micro-batch's backward (communication may start inside it);
/// 2. ``finishBackward()`` after each backward (or once after several, under a pipeline);
/// 3. ``finishGradientSynchronization()`` after the last one: gradients are final;
/// 4. ``squaredNorm(counting:)`` / ``scaleGradients(by:)`` for clipping;
/// 5. ``step()`` then ``zeroGradients()``.
public protocol GradientSynchronizer: AnyObject {
    /// The optimizer over this rank's parameters (its shard under ZeRO); the caller sets its learning rate.
    var optimizer: any Optimizer { get }
    /// The group gradients are averaged over (nil when there is none); a micro-batch's loss is scaled by its
    /// size, so that the average is the gradient of the global batch.
    var dataParallelGroup: (any ProcessGroup)? { get }
    /// How the final gradients lie along the dp axis: ``ConvoyTensor/Placement/replicate`` (every replica holds
    /// the whole averaged gradient) or ``ConvoyTensor/Placement/shard(dim:)`` (ZeRO: each holds its shard).
    var gradientPlacementAlongDataParallel: Placement { get }
    /// One line for people: kind, ranks, buckets.
    var summary: String { get }
    /// The ZeRO stage the optimizer state is sharded by (0: not sharded).
    var zeroStage: Int { get }

    /// Runs one micro-batch's forward and backward. `synchronizing` false: gradients only accumulate locally
    /// (the micro-batches before the last, or every micro-batch of a pipeline, which reduces once at the end).
    func backward(synchronizing: Bool, _ body: () throws -> Void) throws
    /// After a backward (or, under a pipeline, after all of them): moves staged gradients where they belong.
    func finishBackward() throws
    /// After the last backward of a step: waits for every reduction; the gradients are then final.
    func finishGradientSynchronization() throws
    /// The gradient this step has accumulated so far for `parameter` (where it lives before the reduction), so a
    /// weight shared between ranks (a tied embedding) can be summed across its holders first.
    func accumulatedGradient(of parameter: Parameter) -> Tensor
    /// Σ g² (in Double) over the final gradients this rank holds of the parameters `counts` accepts.
    func squaredNorm(counting counts: (Parameter) -> Bool) -> Double
    /// Multiplies this rank's final gradients by `factor`.
    func scaleGradients(by factor: Float)
    /// Applies the optimizer and makes the updated parameters available where the next forward reads them.
    func step() throws
    /// Clears the gradients for the next step.
    func zeroGradients()
    /// Makes every parameter complete and readable on this rank (collective): before evaluation or saving.
    func gatherFullParameters() throws
    /// Undoes ``gatherFullParameters()``; with `copyingBack`, first takes this rank's part from the full
    /// parameters (after the same values were loaded into the model on every rank).
    func releaseFullParameters(copyingBack: Bool)
    /// Waits for parameter updates still in flight (ZeRO's overlapped all-gathers), so the values this rank
    /// holds are final: before a checkpoint reads or writes them.
    func finishPendingUpdates() throws
    /// The slices of parameters the optimizer updates on this rank, each with the name its optimizer state is
    /// saved under: what a sharded checkpoint stores of this rank and what it loads back into the optimizer.
    var checkpointSlices: [CheckpointSlice] { get }
    /// Where this rank keeps parameter values at rest, as slices of the global parameters: whole parameters,
    /// or (ZeRO-3) the rank's shards. A checkpoint loads parameter values into these.
    var residentParameterSlices: [CheckpointSlice] { get }
    /// Called after fp32 values were loaded into ``residentParameterSlices``: a synchronizer that keeps fp32
    /// masters apart from bf16 compute copies (ZeRO 1–2 under `--precision bf16`) takes its masters from them
    /// and refreshes the copies.
    func parameterValuesLoaded()
}
