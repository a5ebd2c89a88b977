import ConvoyTensor

/// A pre-LN transformer block: x + attn(ln_1(x)), then + mlp(ln_2(x)).
public final class TransformerBlock: Module {
    public let attentionNorm: LayerNorm
    public let attention: CausalSelfAttention
    public let mlpNorm: LayerNorm
    public let mlp: MLP
    let layerIndex: Int

    public init(configuration: GPTConfiguration, layerIndex: Int, initializer: Initializer, name: String) {
        let width = configuration.width
        // GPT-2 scales residual projections by 1/sqrt(2·layers): two residual adds per block.
        let projectionStd = 0.02 / Float(2 * configuration.layers).squareRoot()
        attentionNorm = LayerNorm(width: width, epsilon: configuration.layerNormEpsilon, initializer: initializer)
        attention = CausalSelfAttention(
            width: width, heads: configuration.heads, attentionDropout: configuration.attentionDropout,
            residualDropout: configuration.residualDropout, projectionStd: projectionStd, layerIndex: layerIndex,
            initializer: initializer, name: name + ".attn")
        self.layerIndex = layerIndex
        mlpNorm = LayerNorm(width: width, epsilon: configuration.layerNormEpsilon, initializer: initializer)
        mlp = MLP(width: width, hidden: 4 * width, dropout: configuration.residualDropout, projectionStd: projectionStd,
                  layerIndex: layerIndex, initializer: initializer, name: name + ".mlp")
    }

    public override var children: [(name: String, module: Module)] {
        [("ln_1", attentionNorm), ("attn", attention), ("ln_2", mlpNorm), ("mlp", mlp)]
    }

    /// x [batch, time, width] → [batch, time, width]. Under full recompute only x is kept for backward.
    public func callAsFunction(_ x: Tensor, context: ForwardContext) -> Tensor {
        forward {
            guard context.recompute.granularity(ofLayer: layerIndex) == .full else { return body(x, context: context) }
            return Tensor.recomputing(x, parameters: parameters) { [unowned self] in body($0, context: context) }
        }
    }

    private func body(_ x: Tensor, context: ForwardContext) -> Tensor {
        // The residual add and ln_2 run as one pass over each row.
        let (afterAttention, normalized) = mlpNorm(x, plus: attention(attentionNorm(x), context: context))
        return afterAttention + mlp(normalized, context: context)
    }
}
