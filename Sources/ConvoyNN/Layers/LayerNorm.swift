import ConvoyTensor

/// Layer normalisation over the last axis with learned scale and shift.
public final class LayerNorm: Module {
    public let weight: Parameter
    public let bias: Parameter
    public let epsilon: Float

    public init(width: Int, epsilon: Float = 1e-5, initializer: Initializer) {
        weight = initializer.constant([width], value: 1)
        bias = initializer.constant([width], value: 0)
        self.epsilon = epsilon
    }

    public override var localParameters: [(name: String, parameter: Parameter)] { [("weight", weight), ("bias", bias)] }

    public func callAsFunction(_ x: Tensor) -> Tensor {
        forward { Tensor.layerNorm(x, weight: weight, bias: bias, epsilon: epsilon) }
    }

    /// The residual step of a pre-LN block: (residual + delta, layer norm of that sum), in one pass
    /// (``Tensor/residualLayerNorm(_:_:weight:bias:epsilon:)``).
    public func callAsFunction(_ residual: Tensor, plus delta: Tensor) -> (sum: Tensor, normalized: Tensor) {
        runForwardPreHooks()
        let (sum, normalized) = Tensor.residualLayerNorm(residual, delta, weight: weight, bias: bias, epsilon: epsilon)
        return (sum, runForwardPostHooks(normalized))
    }
}
