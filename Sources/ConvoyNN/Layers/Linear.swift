import ConvoyTensor

/// y = x·W + b, with W stored [in, out] as GPT-2's Conv1D stores it (so checkpoints need no transposes).
public final class Linear: Module {
    /// [inFeatures, outFeatures].
    public let weight: Parameter
    /// [outFeatures], or nil.
    public let bias: Parameter?

    /// Creates a layer whose weight is N(0, std²) and bias zero.
    public init(_ inFeatures: Int, _ outFeatures: Int, bias: Bool = true, std: Float = 0.02, initializer: Initializer, name: String) {
        weight = initializer.normal([inFeatures, outFeatures], std: std, name: name + ".weight")
        self.bias = bias ? initializer.constant([outFeatures], value: 0) : nil
    }

    public override var localParameters: [(name: String, parameter: Parameter)] {
        [("weight", weight)] + (bias.map { [("bias", $0)] } ?? [])
    }

    /// Applies the layer to x [..., in].
    public func callAsFunction(_ x: Tensor) -> Tensor {
        forward { Tensor.linear(x, weight: weight, bias: bias) }
    }
}
