import ConvoyNN

/// How a model is pipelined (TOML `[parallel.pipeline]`, flags `--pp --micro-batch-size --accumulate-steps
/// --schedule --virtual-stages`).
public struct PipelineOptions: Sendable, Equatable {
    /// Pipeline stages (pp); 1 means no pipeline.
    public var stages = 1
    /// Model chunks per rank (interleaved schedule).
    public var virtualStages = 1
    /// The schedule each rank's instruction list follows.
    public var schedule: PipelineScheduleKind = .oneForwardOneBackward
    /// Layers per virtual stage, in model order; nil balances by parameters and compute.
    public var stageLayers: [Int]?

    public init() {}

    /// The partition of a model: the explicit ``stageLayers``, or balanced by compute, with the LM head's GEMM
    /// (2·d·V FLOPs per token) counted on the last virtual stage in units of one block (24·d² + 4·T·d); the
    /// embeddings are lookups and cost next to nothing.
    public func partition(for model: ModelShape) throws -> PipelinePartition {
        if let stageLayers {
            return try PipelinePartition.explicit(stageLayers: stageLayers, layers: model.layers, stages: stages, virtualStages: virtualStages)
        }
        let d = Double(model.width), block = 24 * d * d + 4 * Double(model.contextLength) * d
        return try PipelinePartition.balanced(layers: model.layers, stages: stages, virtualStages: virtualStages,
                                              lastStageExtraCost: 2 * d * Double(model.vocabularySize) / block)
    }
}
