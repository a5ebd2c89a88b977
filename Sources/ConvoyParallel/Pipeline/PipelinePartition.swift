import ConvoyTensor

/// How a model's transformer blocks are cut into `stages · virtualStages` contiguous virtual stages.
///
/// Virtual stage `s` holds blocks ``layerRanges``[s] and lives on rank `s % stages` (Megatron's interleaved
/// layout, as in ``PipelineSchedule``), so with `virtualStages > 1` a rank holds several non-adjacent ranges.
/// The embeddings sit on virtual stage 0; the final norm, head and loss on the last one.
public struct PipelinePartition: Sendable, Equatable {
    /// Pipeline ranks (pp).
    public let stages: Int
    /// Model chunks per rank (v).
    public let virtualStages: Int
    /// The blocks of each virtual stage, in model order; they tile `0 ..< layers` and none is empty.
    public let layerRanges: [Range<Int>]

    /// Number of virtual stages: `stages · virtualStages`.
    public var virtualStageCount: Int { stages * virtualStages }

    /// Blocks per virtual stage, in model order.
    public var stageLayers: [Int] { layerRanges.map(\.count) }

    /// The contiguous partition whose most expensive virtual stage is as cheap as possible.
    ///
    /// A virtual stage of `k` blocks costs `k · blockCost`, plus `firstStageExtraCost` on virtual stage 0
    /// (embeddings) and `lastStageExtraCost` on the last (final norm, head, loss). Among partitions with that
    /// smallest maximum, it takes the one with the smallest sum of squared stage costs (the most even), and among
    /// those the one with the most blocks on earlier stages; so 10 blocks on 4 stages give [3, 3, 2, 2].
    ///
    /// - Throws: ``ConvoyTensor/ConvoyError/invalidConfiguration(_:)`` when there are fewer layers than virtual
    ///   stages, a count is below 1, `blockCost` is not positive or an extra cost is negative.
    public static func balanced(layers: Int, stages: Int, virtualStages: Int = 1, blockCost: Double = 1,
                                firstStageExtraCost: Double = 0, lastStageExtraCost: Double = 0) throws -> PipelinePartition {
        try validate(layers: layers, stages: stages, virtualStages: virtualStages)
        guard blockCost.isFinite, blockCost > 0 else {
            throw ConvoyError.invalidConfiguration("the cost of a block must be positive, got \(blockCost)")
        }
        guard firstStageExtraCost.isFinite, firstStageExtraCost >= 0, lastStageExtraCost.isFinite, lastStageExtraCost >= 0 else {
            throw ConvoyError.invalidConfiguration(
                "extra stage costs must be ≥ 0, got first \(firstStageExtraCost), last \(lastStageExtraCost)")
        }
        let count = stages * virtualStages
        func cost(_ stage: Int, _ blocks: Int) -> Double {
            Double(blocks) * blockCost + (stage == 0 ? firstStageExtraCost : 0) + (stage == count - 1 ? lastStageExtraCost : 0)
        }
        // Sums of doubles that are equal on paper may differ in the last bits; compare with a relative slack.
        func atMost(_ a: Double, _ b: Double) -> Bool { a <= b + 1e-9 * max(1, abs(b)) }

        // best[s][j]: the smallest possible maximum cost of stages s..<count covering blocks j..<layers.
        // Stage s may start at j only if every earlier stage and every later stage can have a block.
        var best = Array(repeating: Array(repeating: Double.infinity, count: layers + 1), count: count + 1)
        best[count][layers] = 0
        for stage in stride(from: count - 1, through: 0, by: -1) {
            for start in stage...(layers - (count - stage)) {
                for end in (start + 1)...(layers - (count - stage - 1)) {
                    best[stage][start] = min(best[stage][start], max(cost(stage, end - start), best[stage + 1][end]))
                }
            }
        }
        let bottleneck = best[0][0]

        // even[s][j]: the smallest sum of squared costs of stages s..<count from block j, no stage above bottleneck.
        var even = Array(repeating: Array(repeating: Double.infinity, count: layers + 1), count: count + 1)
        even[count][layers] = 0
        for stage in stride(from: count - 1, through: 0, by: -1) {
            for start in stage...(layers - (count - stage)) {
                for end in (start + 1)...(layers - (count - stage - 1)) where atMost(cost(stage, end - start), bottleneck) {
                    let c = cost(stage, end - start)
                    even[stage][start] = min(even[stage][start], c * c + even[stage + 1][end])
                }
            }
        }
        // Walk forward taking, at each stage, the longest range that still reaches the optimum.
        var ranges: [Range<Int>] = []
        var start = 0
        for stage in 0..<count {
            let end = stride(from: layers - (count - stage - 1), to: start, by: -1).first { end in
                let c = cost(stage, end - start)
                return atMost(c, bottleneck) && atMost(c * c + even[stage + 1][end], even[stage][start])
            }!
            ranges.append(start..<end)
            start = end
        }
        return PipelinePartition(stages: stages, virtualStages: virtualStages, layerRanges: ranges)
    }

    /// The partition with `stageLayers[s]` blocks on virtual stage `s`, in model order.
    ///
    /// - Throws: ``ConvoyTensor/ConvoyError/invalidConfiguration(_:)`` when there are fewer layers than virtual
    ///   stages, the number of counts is not `stages · virtualStages`, a count is below 1, or the counts do not
    ///   add up to `layers`.
    public static func explicit(stageLayers: [Int], layers: Int, stages: Int, virtualStages: Int = 1) throws -> PipelinePartition {
        try validate(layers: layers, stages: stages, virtualStages: virtualStages)
        let count = stages * virtualStages
        guard stageLayers.count == count else {
            throw ConvoyError.invalidConfiguration(
                "stage_layers lists \(stageLayers.count) counts but pp × virtual_stages = \(stages) × \(virtualStages) = \(count); give one count per virtual stage")
        }
        if let stage = stageLayers.firstIndex(where: { $0 < 1 }) {
            throw ConvoyError.invalidConfiguration(
                "stage_layers gives virtual stage \(stage) \(stageLayers[stage]) layers; every virtual stage needs at least 1")
        }
        let sum = stageLayers.reduce(0, +)
        guard sum == layers else {
            throw ConvoyError.invalidConfiguration(
                "stage_layers \(stageLayers) adds up to \(sum) layers but the model has \(layers); make them sum to \(layers)")
        }
        var ranges: [Range<Int>] = []
        var start = 0
        for blocks in stageLayers {
            ranges.append(start..<(start + blocks))
            start += blocks
        }
        return PipelinePartition(stages: stages, virtualStages: virtualStages, layerRanges: ranges)
    }

    /// The rank that holds virtual stage `stage`.
    public func rank(ofVirtualStage stage: Int) -> Int { stage % stages }

    /// The virtual stages `rank` holds, in model order: `rank, rank + pp, …`.
    public func virtualStages(onRank rank: Int) -> [Int] {
        Array(stride(from: rank, to: virtualStageCount, by: stages))
    }

    /// The block ranges `rank` holds, in model order (one per local chunk).
    public func layerRanges(onRank rank: Int) -> [Range<Int>] {
        virtualStages(onRank: rank).map { layerRanges[$0] }
    }

    private static func validate(layers: Int, stages: Int, virtualStages: Int) throws {
        guard stages >= 1, virtualStages >= 1 else {
            throw ConvoyError.invalidConfiguration(
                "pp and virtual_stages must be at least 1, got pp = \(stages), virtual_stages = \(virtualStages)")
        }
        guard layers >= stages * virtualStages else {
            throw ConvoyError.invalidConfiguration(
                "the model has \(layers) layers but pp × virtual_stages = \(stages * virtualStages) stages need at least one layer each; lower pp or virtual_stages")
        }
    }
}
