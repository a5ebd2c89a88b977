import ConvoyComm
import ConvoyNN
import ConvoyTensor

/// What a pipeline configuration will do, worked out without building a model (`convoy plan --pp …`): which
/// layers each rank holds, its parameters, the process groups, the schedule's predicted bubble and the peak
/// activation memory of each stage.
public struct PipelinePlan: Sendable {
    /// One pipeline rank.
    public struct Stage: Sendable {
        public let pipelineRank: Int
        /// Virtual stages on the rank with their block ranges.
        public let chunks: [(virtualStage: Int, layers: Range<Int>)]
        public let holdsEmbeddings: Bool
        public let holdsHead: Bool
        /// Parameters the rank owns (a tied embedding counted on both ends).
        public let parameters: Int
        /// Most (micro-batch, chunk) activations stashed at once (from the simulated schedule).
        public let peakStashed: Int
        /// Estimated bytes of those stashed activations at the peak.
        public let peakActivationBytes: Int
    }

    public let model: GPTConfiguration
    public let mesh: DeviceMesh
    public let partition: PipelinePartition
    public let schedule: PipelineSchedule
    public let microBatchSize: Int
    public let stages: [Stage]
    /// The simulator's bubble with per-chunk costs proportional to compute (backward = 2 × forward).
    public let predictedBubble: Double
    /// (p − 1)/(v·m + p − 1).
    public let formulaBubble: Double

    /// Plans `options` for `model` on `dataParallelSize` replicas with `microBatches` micro-batches of
    /// `microBatchSize` sequences.
    public init(model: GPTConfiguration, options: PipelineOptions, dataParallelSize: Int, microBatches: Int, microBatchSize: Int) throws {
        guard microBatchSize >= 1 else {
            throw ConvoyError.invalidConfiguration("--micro-batch-size must be at least 1, got \(microBatchSize)")
        }
        self.model = model
        self.microBatchSize = microBatchSize
        mesh = try DeviceMesh(dp: dataParallelSize, pp: options.stages, tp: 1)
        let partition = try options.partition(for: model.shape)
        self.partition = partition
        schedule = try PipelineSchedule(kind: options.schedule, stages: options.stages, microBatches: microBatches, virtualStages: options.virtualStages)
        let d = model.width, t = model.contextLength, v = model.vocabularySize
        let blockCompute = 24.0 * Double(d * d) + 4.0 * Double(t * d)
        let headCompute = 2.0 * Double(d * v)
        let last = partition.virtualStageCount - 1
        let forwardCosts = partition.layerRanges.enumerated().map { stage, layers in
            (Double(layers.count) * blockCompute + (stage == last ? headCompute : 0)) / blockCompute
        }
        let simulation = try PipelineSimulator(costModel: PipelineCostModel(forwardCosts: forwardCosts, backwardCosts: forwardCosts.map { 2 * $0 }))
            .simulate(try PipelineSchedule(kind: options.schedule, stages: options.stages, microBatches: microBatches, virtualStages: options.virtualStages))
        predictedBubble = simulation.bubbleFraction
        formulaBubble = PipelineSchedule.bubbleFormula(stages: options.stages, microBatches: microBatches, virtualStages: options.virtualStages)
        // Parameters: a block has 12d² + 13d (QKV, projection, MLP, two layer norms); embeddings V·d + T·d;
        // the final norm 2d; the head reuses the token embedding.
        let blockParameters = 12 * d * d + 13 * d
        stages = (0..<options.stages).map { rank in
            let virtualStages = partition.virtualStages(onRank: rank)
            let chunks = virtualStages.map { ($0, partition.layerRanges[$0]) }
            let holdsEmbeddings = virtualStages.contains(0), holdsHead = virtualStages.contains(last)
            let blocks = chunks.reduce(0) { $0 + $1.1.count }
            let parameters = blocks * blockParameters + (holdsEmbeddings ? v * d + t * d : 0) + (holdsHead ? 2 * d + (holdsEmbeddings ? 0 : v * d) : 0)
            // The largest chunk bounds what one stashed micro-batch holds on this rank.
            let perChunk = chunks.map { Self.activationBytes(model: model, layers: $0.1.count, head: $0.0 == last, batch: microBatchSize) }.max() ?? 0
            let peak = simulation.peakStashedMicroBatches[rank]
            return Stage(pipelineRank: rank, chunks: chunks, holdsEmbeddings: holdsEmbeddings, holdsHead: holdsHead,
                         parameters: parameters, peakStashed: peak, peakActivationBytes: peak * perChunk)
        }
    }

    /// Estimated fp32 bytes a chunk keeps for backward per micro-batch: Megatron's per-layer activation count
    /// (Korthikanti et al., 2022: 34·T·b·d + 5·a·T²·b in 16-bit) doubled for fp32, plus the logits and their
    /// softmax on the head's chunk.
    public static func activationBytes(model: GPTConfiguration, layers: Int, head: Bool, batch: Int) -> Int {
        let t = model.contextLength, d = model.width, a = model.heads
        let perLayer = 2 * (34 * t * batch * d + 5 * a * t * t * batch)
        return layers * perLayer + (head ? 2 * 4 * t * batch * model.vocabularySize : 0)
    }

    /// World ranks of each pipeline (one per data-parallel replica), each listed by pipeline rank.
    public var pipelineGroups: [[Int]] {
        (0..<mesh.dp).map { replica in mesh.ranksAlong(.pp, through: mesh.rank(dp: replica, pp: 0, tp: 0)) }
    }

    /// World ranks of each stage's data-parallel group.
    public var dataParallelGroups: [[Int]] {
        (0..<mesh.pp).map { stage in mesh.ranksAlong(.dp, through: mesh.rank(dp: 0, pp: stage, tp: 0)) }
    }

    /// World ranks of each embedding group (the first and last stage of a pipeline), when the tie spans ranks.
    public var embeddingGroups: [[Int]] {
        mesh.pp > 1 ? pipelineGroups.map { [$0.first!, $0.last!] } : []
    }
}
