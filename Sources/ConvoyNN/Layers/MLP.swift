import ConvoyTensor

/// GPT-2's feed-forward block: c_fc (width → 4·width), GELU (tanh), c_proj (4·width → width), dropout.
public final class MLP: Module {
    public let fullyConnected: Linear
    public let projection: Linear
    public let dropout: Float
    let layerIndex: Int

    public init(width: Int, hidden: Int, dropout: Float, projectionStd: Float, layerIndex: Int, initializer: Initializer, name: String) {
        fullyConnected = Linear(width, hidden, initializer: initializer, name: name + ".c_fc")
        projection = Linear(hidden, width, std: projectionStd, initializer: initializer, name: name + ".c_proj")
        self.dropout = dropout
        self.layerIndex = layerIndex
    }

    public override var children: [(name: String, module: Module)] { [("c_fc", fullyConnected), ("c_proj", projection)] }

    public func callAsFunction(_ x: Tensor, context: ForwardContext) -> Tensor {
        forward {
            let y = projection(fullyConnected.gelu(x))
            guard context.training && dropout > 0 else { return y }
            return Tensor.dropout(y, probability: dropout, key: context.dropoutKey(layer: layerIndex, site: .mlpOutput))
        }
    }
}
