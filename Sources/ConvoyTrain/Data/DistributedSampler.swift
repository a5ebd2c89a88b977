import ConvoyTensor

/// Which examples of each step's global batch a rank computes, and in which micro-batch.
///
/// The global batch of step s is examples `s·B ..< (s+1)·B`. Data-parallel rank r of W owns the contiguous
/// slice `r·B/W ..< (r+1)·B/W`, and micro-batch m of M within it the next `B/(W·M)` examples. Every split
/// therefore covers the same global batch exactly once, and a sequence keeps its position in the global
/// batch (which dropout masks are derived from) however the batch is split.
public struct DistributedSampler: Sendable, Equatable {
    /// Sequences per optimizer step, over all ranks and micro-batches.
    public let globalBatch: Int
    /// Data-parallel ranks.
    public let worldSize: Int
    /// This rank's index among them.
    public let rank: Int
    /// Micro-batches per step on each rank (gradient accumulation / pipeline micro-batches).
    public let microBatches: Int

    /// Throws when the global batch cannot be split evenly.
    public init(globalBatch: Int, worldSize: Int = 1, rank: Int = 0, microBatches: Int = 1) throws {
        guard globalBatch > 0 else { throw ConvoyError.invalidConfiguration("batch must be positive, got \(globalBatch)") }
        guard worldSize > 0, rank >= 0, rank < worldSize else {
            throw ConvoyError.invalidConfiguration("rank \(rank) is outside a data-parallel world of \(worldSize)")
        }
        guard microBatches > 0 else { throw ConvoyError.invalidConfiguration("accumulate_steps must be positive, got \(microBatches)") }
        guard globalBatch % (worldSize * microBatches) == 0 else {
            throw ConvoyError.invalidConfiguration(
                "batch \(globalBatch) is not divisible by data-parallel size \(worldSize) × micro-batches \(microBatches); choose a batch that is a multiple of \(worldSize * microBatches)")
        }
        self.globalBatch = globalBatch
        self.worldSize = worldSize
        self.rank = rank
        self.microBatches = microBatches
    }

    /// Sequences in one micro-batch on one rank.
    public var microBatchSize: Int { globalBatch / (worldSize * microBatches) }

    /// Position within the global batch of the first sequence of `microBatch` on this rank.
    public func firstSequence(microBatch: Int) -> Int {
        precondition(microBatch >= 0 && microBatch < microBatches, "micro-batch \(microBatch) is outside 0..<\(microBatches)")
        return rank * (globalBatch / worldSize) + microBatch * microBatchSize
    }

    /// Global example indices of `microBatch` of `step` on this rank.
    public func indices(step: Int, microBatch: Int) -> Range<Int> {
        let start = step * globalBatch + firstSequence(microBatch: microBatch)
        return start..<(start + microBatchSize)
    }
}
