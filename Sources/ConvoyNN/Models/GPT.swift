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

    /// Logits for tokens [batch·time] laid out row-major as [batch, time].
    public func logits(_ tokens: [Int32], batch: Int, time: Int, context: ForwardContext = .evaluation) -> Tensor {
        var x = embed(tokens, batch: batch, time: time, context: context)
        for block in blocks { x = block(x, context: context) }
        return head(x)
    }

    /// Mean cross-entropy of predicting `targets` (same layout as `tokens`; −1 entries are ignored).
    public func loss(_ tokens: [Int32], targets: [Int32], batch: Int, time: Int, context: ForwardContext = .evaluation) -> Tensor {
        Tensor.crossEntropy(logits: logits(tokens, batch: batch, time: time, context: context), targets: targets)
    }
}
