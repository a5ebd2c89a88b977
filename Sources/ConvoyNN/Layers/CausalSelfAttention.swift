import ConvoyTensor

/// GPT-2's attention: fused QKV projection (c_attn), causal multi-head attention, output projection (c_proj).
public final class CausalSelfAttention: Module {
    public let qkvProjection: Linear
    public let outputProjection: Linear
    public let heads: Int
    public let attentionDropout: Float
    public let residualDropout: Float
    let layerIndex: Int

    public init(width: Int, heads: Int, attentionDropout: Float, residualDropout: Float, projectionStd: Float, layerIndex: Int, initializer: Initializer, name: String) {
        precondition(width % heads == 0, "width \(width) must be divisible by the number of heads \(heads)")
        qkvProjection = Linear(width, 3 * width, initializer: initializer, name: name + ".c_attn")
        outputProjection = Linear(width, width, std: projectionStd, initializer: initializer, name: name + ".c_proj")
        self.heads = heads
        self.attentionDropout = attentionDropout
        self.residualDropout = residualDropout
        self.layerIndex = layerIndex
    }

    public override var children: [(name: String, module: Module)] { [("c_attn", qkvProjection), ("c_proj", outputProjection)] }

    /// x [batch, time, width] → [batch, time, width].
    public func callAsFunction(_ x: Tensor, context: ForwardContext) -> Tensor {
        forward {
            let qkv = qkvProjection(x)
            let active = context.training
            let attended = Tensor.causalSelfAttention(
                qkv: qkv, heads: heads,
                dropout: active ? attentionDropout : 0,
                key: active ? context.dropoutKey(layer: layerIndex, site: .attentionProbabilities) : nil,
                recompute: context.recompute.granularity(ofLayer: layerIndex) == .selective)
            let y = outputProjection(attended)
            guard active && residualDropout > 0 else { return y }
            return Tensor.dropout(y, probability: residualDropout, key: context.dropoutKey(layer: layerIndex, site: .attentionOutput))
        }
    }
}
