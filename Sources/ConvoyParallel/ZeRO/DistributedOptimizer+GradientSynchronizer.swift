import ConvoyComm
import ConvoyNN
import ConvoyTensor
import Foundation

/// ZeRO stages 1–3 as a ``GradientSynchronizer``: gradients end as this rank's shard (reduce-scattered), the
/// optimizer updates the shard, and the parameters are gathered again.
extension DistributedOptimizer: GradientSynchronizer {
    public var dataParallelGroup: (any ProcessGroup)? { group }
    public var zeroStage: Int { stage }
    public var gradientPlacementAlongDataParallel: Placement { .shard(dim: 0) }
    public var summary: String { "ZeRO stage \(stage) over \(group.size) ranks, \(buffer.buckets.count) buckets" }

    public func backward(synchronizing: Bool, _ body: () throws -> Void) throws { try body() }

    public func accumulatedGradient(of parameter: Parameter) -> Tensor {
        // Stages 2 and 3 keep this step's gradients in the buckets' staging buffers until they are reduced;
        // stage 1 accumulates into the full gradient buffer, which `grad` views.
        if stage >= 2 { return stagedGradient(of: parameter) }
        return parameter.grad!
    }

    public func squaredNorm(counting counts: (Parameter) -> Bool) -> Double {
        squaredShardNorm(counting: counts)
    }

    public func finishPendingUpdates() throws { try waitForParameters() }

    public var checkpointSlices: [CheckpointSlice] {
        shardSlices.map { slice in
            CheckpointSlice(parameter: slice.name, globalShape: slice.parameter.shape,
                            boxes: TensorBox.boxes(coveringFlat: slice.range, of: slice.parameter.shape), values: slice.values,
                            optimizerKey: slice.values.name!, isPrimaryCopy: slice.parameter.placement.isPrimaryCopy, distinctAlongDataParallel: true)
        }
    }

    /// Stages 1 and 2 keep whole parameters on every rank; stage 3 only the rank's shards.
    public var residentParameterSlices: [CheckpointSlice] {
        stage == 3 ? checkpointSlices : buffer.parameters.map { CheckpointSlice(whole: $0.parameter, name: $0.name) }
    }
}
