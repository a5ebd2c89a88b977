import ConvoyTensor

/// On, off, or decided by Convoy (on when the world has more than one rank: there is nothing to fuse for).
public enum FusionChoice: String, Sendable, CaseIterable {
    case automatic = "auto"
    case on
    case off

    /// Whether fusion is used for a world of `ranks` ranks.
    public func isEnabled(ranks: Int) -> Bool {
        switch self {
        case .automatic: return ranks > 1
        case .on: return true
        case .off: return false
        }
    }
}

/// How data parallelism reduces gradients (TOML `[parallel.ddp]`).
public struct DataParallelOptions: Sendable, Equatable {
    /// Group gradients into buckets (on) or all-reduce each parameter separately (off).
    public var bucketing = true
    /// Cap of the first bucket in MiB: small, so the first reduction starts early in backward.
    public var firstBucketCapMB: Double = 1
    /// Cap of the other buckets in MiB.
    public var bucketCapMB: Double = 25
    /// Launch each bucket's all-reduce as soon as it is complete, overlapping the rest of backward.
    public var overlapGradReduce = true
    /// Reduce each bucket group with one all-reduce (on), or each parameter with its own (off, PaddlePaddle's
    /// unfused all-reduce). Gradients are views into one contiguous buffer either way (the bucket engine).
    public var fuseAllReduce: FusionChoice = .automatic
    /// Use the flat-buffer optimizers.
    public var fuseOptimizer: FusionChoice = .automatic
    /// Mark parameters that got no gradient as ready with a zero gradient instead of failing.
    public var findUnusedParameters = false
    /// ZeRO: launch the all-gathers of updated parameters asynchronously after the step; each layer's next
    /// forward waits only for the gathers of its own buckets, in forward order.
    public var overlapParamGather = false
    /// ZeRO stage 3: release each layer's gathered parameters after its forward and gather them again before
    /// its backward (less memory), or keep them from forward to backward (one all-gather fewer per layer).
    public var reshardAfterForward = true
    /// ZeRO: consecutive buckets per bucket group. Each group is reduce-scattered (and, at stages 1 and 2,
    /// all-gathered) by one collective once all its buckets are ready: fewer, larger collectives (less
    /// per-message latency) for a later start of the first one and a transient rank-major copy of the group.
    public var bucketsPerGroup = 1
    /// The element type gradients are reduced in (all-reduced by DDP, reduce-scattered by ZeRO 1–3): float32,
    /// or bfloat16 (half the bytes). Gradients are accumulated, clipped and stepped in float32 either way.
    public var gradientReduceDType: DType = .float32
    /// The element type of the parameters' compute copies (not a setting of its own: `training.precision`
    /// decides it). bfloat16: every parameter computes with its fp32 master rounded to bf16 — ZeRO 1–3 gather
    /// bf16 (half the bytes) from fp32 master shards; without ZeRO the runtime rounds the parameters for each
    /// step and restores the masters before the optimizer step.
    public var parameterDType: DType = .float32

    public init() {}
}
