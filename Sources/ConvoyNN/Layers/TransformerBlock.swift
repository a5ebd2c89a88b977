import ConvoyTensor

/// A pre-LN transformer block: x + attn(ln_1(x)), then + mlp(ln_2(x)).
public final class TransformerBlock: Module {
    public let attentionNorm: LayerNorm
    public let attention: CausalSelfAttention
    public let mlpNorm: LayerNorm
    public let mlp: MLP

    public init(configuration: GPTConfiguration, layerIndex: Int, initializer: Initializer, name: String) {
        let width = configuration.width
        // GPT-2 scales residual projections by 1/sqrt(2·layers): two residual adds per block.
        let projectionStd = 0.02 / Float(2 * configuration.layers).squareRoot()
        attentionNorm = LayerNorm(width: width, epsilon: configuration.layerNormEpsilon, initializer: initializer)
        attention = CausalSelfAttention(
            width: width, heads: configuration.heads, attentionDropout: configuration.attentionDropout,
            residualDropout: configuration.residualDropout, projectionStd: projectionStd, layerIndex: layerIndex,
            initializer: initializer, name: name + ".attn")
        mlpNorm = LayerNorm(width: width, epsilon: configuration.layerNormEpsilon, initializer: initializer)
        mlp = MLP(width: width, hidden: 4 * width, dropout: configuration.residualDropout, projectionStd: projectionStd,
                  layerIndex: layerIndex, initializer: initializer, name: name + ".mlp")
    }

    public override var children: [(name: String, module: Module)] {
        [("ln_1", attentionNorm), ("attn", attention), ("ln_2", mlpNorm), ("mlp", mlp)]
    }

    /// x [batch, time, width] → [batch, time, width].
    public func callAsFunction(_ x: Tensor, context: ForwardContext) -> Tensor {
        forward {
            let afterAttention = x + attention(attentionNorm(x), context: context)
            return afterAttention + mlp(mlpNorm(afterAttention), context: context)
        }
    }
}
