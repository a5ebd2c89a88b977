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

    /// GELU of the layer's output, with the bias add fused into GELU's pass (``Tensor/biasGELU(_:bias:)``):
    /// the GEMM writes x·W and one pass adds the bias and applies GELU. Under tensor parallelism the sharded
    /// layer keeps its bias and GELU runs on its own (the operators the placement rules cover).
    public func gelu(_ x: Tensor) -> Tensor {
        forward {
            guard let bias, !PlacementDeduction.wouldDispatch([x, weight, bias]) else { return Tensor.linear(x, weight: weight, bias: bias).gelu() }
            return Tensor.biasGELU(Tensor.linear(x, weight: weight, bias: nil), bias: bias)
        }
    }
}
