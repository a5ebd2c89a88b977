import ConvoyComm
import ConvoyNN

/// Everything a ``ParallelPlan`` is built from (TOML `[parallel]`, `[parallel.ddp]`, `[parallel.pipeline]`,
/// `[[placement]]`).
public struct ParallelSettings: Sendable, Equatable {
    /// Data-parallel replicas; nil: the world size ÷ (pp · tp).
    public var dataParallelSize: Int?
    /// Tensor-parallel ranks per layer.
    public var tensorParallelSize = 1
    /// Whether the regions between tensor-parallel blocks (layer norms, dropout, residual adds) hold activations
    /// sharded along the sequence (Megatron's sequence parallelism; needs tp > 1).
    public var sequenceParallel = false
    /// Context-parallel and expert-parallel ranks: their axes exist in the mesh, no strategy uses them yet.
    public var contextParallelSize = 1
    public var expertParallelSize = 1
    /// The mesh's axis order, fastest-varying first (`parallel.order`, default `tp-dp-pp`).
    public var order: [MeshAxis] = DeviceMesh.defaultOrder
    /// ZeRO stage: 0 is plain data parallelism; 1 shards optimizer state; 2 also gradients; 3 also parameters.
    public var zeroStage = 0
    /// How gradients are bucketed and reduced.
    public var dataParallel = DataParallelOptions()
    /// Pipeline stages, schedule, virtual stages and explicit stage sizes.
    public var pipeline = PipelineOptions()
    /// Micro-batches per step (gradient accumulation steps, or a pipeline's micro-batches).
    public var microBatches = 1
    /// Sequences per micro-batch; when set, micro_batch_size × micro-batches × dp must equal the global batch.
    public var microBatchSize: Int?
    /// Sequences per step over all replicas (to check ``microBatchSize`` against).
    public var globalBatch: Int?
    /// `[[placement]]` sections: module patterns on device groups, in file order.
    public var placements: [ModulePlacement] = []

    public init() {}
}
