import ConvoyTensor

/// GPT-2, exactly: learned position embeddings, pre-LN blocks with fused QKV, GELU (tanh), a final layer
/// norm, and an LM head tied to the token embedding. Parameter names are GPT-2's without the
/// `transformer.` prefix (`wte.weight`, `h.0.attn.c_attn.weight`, …, `ln_f.bias`).
///
/// The blocks are a plain list (``blocks``) so a pipeline can cut it into stages; ``embed(_:batch:time:context:)``,
/// ``TransformerBlock/callAsFunction(_:context:)`` and ``head(_:)`` are the pieces a stage runs.
public final class GPT: Module {
    public let configuration: GPTConfiguration
    public let tokenEmbedding: Embedding
    public let positionEmbedding: Embedding
    public let blocks: [TransformerBlock]
    public let finalNorm: LayerNorm
    private let blockList: ModuleList<TransformerBlock>

    /// Builds a model initialised from `seed` (weights N(0, 0.02), residual projections N(0, 0.02/√(2·layers)),
    /// biases 0, layer-norm weights 1). Throws when the configuration is invalid.
    public init(_ configuration: GPTConfiguration, seed: UInt64) throws {
        try configuration.validate()
        self.configuration = configuration
        let initializer = Initializer(seed: seed)
        tokenEmbedding = Embedding(count: configuration.vocabularySize, width: configuration.width, initializer: initializer, name: "wte")
        positionEmbedding = Embedding(count: configuration.contextLength, width: configuration.width, initializer: initializer, name: "wpe")
        blocks = (0..<configuration.layers).map {
            TransformerBlock(configuration: configuration, layerIndex: $0, initializer: initializer, name: "h.\($0)")
        }
        blockList = ModuleList(blocks)
        finalNorm = LayerNorm(width: configuration.width, epsilon: configuration.layerNormEpsilon, initializer: initializer)
        super.init()
        assignParameterNames()
    }

    public override var children: [(name: String, module: Module)] {
        [("wte", tokenEmbedding), ("wpe", positionEmbedding), ("h", blockList), ("ln_f", finalNorm)]
    }

    /// Token + position embeddings (then embedding dropout): tokens [batch·time] → [batch, time, width].
    public func embed(_ tokens: [Int32], batch: Int, time: Int, context: ForwardContext) -> Tensor {
        precondition(time <= configuration.contextLength, "sequence length \(time) exceeds the model's context length \(configuration.contextLength)")
        let tokenVectors = tokenEmbedding(tokens, shape: [batch, time])
        let positions = positionEmbedding(Array(0..<Int32(time)), shape: [time])
        let x = tokenVectors + positions
        guard context.training && configuration.embeddingDropout > 0 else { return x }
        return Tensor.dropout(x, probability: configuration.embeddingDropout, key: context.dropoutKey(layer: -1, site: .embedding))
    }

    /// Final layer norm and the tied LM head: [batch, time, width] → logits [batch, time, vocabulary].
    public func head(_ hidden: Tensor) -> Tensor {
        finalNorm(hidden).matmul(tokenEmbedding.weight.transposed())
    }
}

extension GPT: LanguageModel {
    public var kind: String { "gpt" }
    public var shape: ModelShape { configuration.shape }
    public var layers: [Module] { blocks }
    public var inputModules: [Module] { [tokenEmbedding, positionEmbedding] }
    public var outputModules: [Module] { [finalNorm, tokenEmbedding] }
    public var tiedWeight: Parameter? { tokenEmbedding.weight }

    /// Megatron's layout: c_attn column-parallel by head (Q, K and V of the same heads on each rank), c_fc
    /// column-parallel, both c_proj row-parallel (their biases replicated, added after the reduction), the token
    /// embedding cut along the vocabulary (padded to a multiple of tp), which makes the tied head produce
    /// vocabulary-sharded logits. Layer norms and the position embedding stay replicated.
    public var tensorParallelShardings: [String: TensorParallelSharding] {
        var shardings: [String: TensorParallelSharding] = ["wte.weight": TensorParallelSharding(dimension: 0, padded: true)]
        for index in blocks.indices {
            let block = "h.\(index)"
            shardings[block + ".attn.c_attn.weight"] = TensorParallelSharding(dimension: 1, blocks: 3)
            shardings[block + ".attn.c_attn.bias"] = TensorParallelSharding(dimension: 0, blocks: 3)
            shardings[block + ".attn.c_proj.weight"] = .rows
            shardings[block + ".mlp.c_fc.weight"] = .columns
            shardings[block + ".mlp.c_fc.bias"] = .rows
            shardings[block + ".mlp.c_proj.weight"] = .rows
        }
        return shardings
    }

    public func layer(_ index: Int, _ hidden: Tensor, context: ForwardContext) -> Tensor {
        blocks[index](hidden, context: context)
    }

    public func saveWeights(to directory: String) throws { try GPTCheckpoint.save(self, to: directory) }

    public func exportWeights(to directory: String, shape: (String) throws -> [Int], tensor: (String) throws -> Tensor) throws {
        try GPTCheckpoint.export(configuration, parameters: try namedParameters().map { ($0.name, try shape($0.name), $0.parameter.dtype) }, to: directory, tensor: tensor)
    }

    public func loadWeights(from directory: String) throws {
        try checkWeightsCompatible(in: directory)
        try GPTCheckpoint.loadWeights(into: self, from: directory)
    }

    public func checkWeightsCompatible(in directory: String) throws {
        let saved = try GPTCheckpoint.readConfiguration(from: directory)
        let expected = configuration
        guard saved.layers == expected.layers, saved.width == expected.width, saved.heads == expected.heads,
              saved.contextLength == expected.contextLength, saved.vocabularySize == expected.vocabularySize else {
            throw ConvoyError.incompatible(
                "checkpoint \(directory) holds a GPT with \(saved.layers) layers, d_model \(saved.width), \(saved.heads) heads, context \(saved.contextLength); the run is configured for \(expected.layers) layers, d_model \(expected.width), \(expected.heads) heads, context \(expected.contextLength). Use the flags the checkpoint was trained with")
        }
    }
}

extension GPTConfiguration {
    /// The shape parallel plans read (GPT's modules: `wte`, `wpe`, `h.N`, `ln_f`).
    public var shape: ModelShape {
        ModelShape(layers: layers, width: width, heads: heads, contextLength: contextLength, vocabularySize: vocabularySize,
                   layerSequenceName: "h", inputModuleNames: ["wte", "wpe"], outputModuleNames: ["ln_f"])
    }
}
