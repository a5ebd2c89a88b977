import ConvoyTensor

/// The shape of a GPT-2 model. Field names follow Convoy; ``huggingFaceConfig`` maps them to GPT-2's
/// `config.json` keys (`n_embd`, `n_layer`, …).
public struct GPTConfiguration: Sendable, Equatable, Codable {
    /// Tokens in the vocabulary (256 for the byte-level tokenizer).
    public var vocabularySize: Int
    /// Maximum sequence length (learned position embeddings).
    public var contextLength: Int
    /// Number of transformer blocks.
    public var layers: Int
    /// Attention heads per block.
    public var heads: Int
    /// Model width (embedding size).
    public var width: Int
    /// Dropout after the embeddings (`embd_pdrop`).
    public var embeddingDropout: Float
    /// Dropout on attention probabilities (`attn_pdrop`).
    public var attentionDropout: Float
    /// Dropout on residual branches (`resid_pdrop`).
    public var residualDropout: Float
    /// Layer-norm epsilon.
    public var layerNormEpsilon: Float

    public init(vocabularySize: Int = 256, contextLength: Int = 256, layers: Int = 6, heads: Int = 6, width: Int = 384,
                embeddingDropout: Float = 0, attentionDropout: Float = 0, residualDropout: Float = 0, layerNormEpsilon: Float = 1e-5) {
        self.vocabularySize = vocabularySize
        self.contextLength = contextLength
        self.layers = layers
        self.heads = heads
        self.width = width
        self.embeddingDropout = embeddingDropout
        self.attentionDropout = attentionDropout
        self.residualDropout = residualDropout
        self.layerNormEpsilon = layerNormEpsilon
    }

    /// Throws a clear error when the shape is unusable.
    public func validate() throws {
        func require(_ condition: Bool, _ message: String) throws {
            if !condition { throw ConvoyError.invalidConfiguration(message) }
        }
        try require(vocabularySize > 0, "vocabulary size must be positive, got \(vocabularySize)")
        try require(contextLength > 0, "context length must be positive, got \(contextLength)")
        try require(layers > 0, "layers must be positive, got \(layers)")
        try require(heads > 0, "heads must be positive, got \(heads)")
        try require(width > 0 && width % heads == 0, "d-model \(width) must be a positive multiple of heads \(heads); change --d-model or --heads")
        for (name, value) in [("embd_pdrop", embeddingDropout), ("attn_pdrop", attentionDropout), ("resid_pdrop", residualDropout)] {
            try require(value >= 0 && value < 1, "\(name) must be in [0, 1), got \(value)")
        }
        try require(layerNormEpsilon > 0, "layer_norm_epsilon must be positive, got \(layerNormEpsilon)")
    }

    /// Parameters of the model: embeddings + 12·width² + 13·width per block + final norm (head tied).
    public var parameterCount: Int {
        let perBlock = 12 * width * width + 13 * width
        return vocabularySize * width + contextLength * width + layers * perBlock + 2 * width
    }

    /// Model FLOPs per token for training (forward + backward): 6·N + 12·L·d·T (DESIGN.md §7).
    public var trainingFLOPsPerToken: Double {
        6 * Double(parameterCount) + 12 * Double(layers) * Double(width) * Double(contextLength)
    }
}
