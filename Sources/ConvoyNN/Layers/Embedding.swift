import ConvoyTensor

/// A lookup table of vectors indexed by integer ids.
public final class Embedding: Module {
    /// [count, width].
    public let weight: Parameter

    public init(count: Int, width: Int, std: Float = 0.02, initializer: Initializer, name: String) {
        weight = initializer.normal([count, width], std: std, name: name + ".weight")
    }

    public override var localParameters: [(name: String, parameter: Parameter)] { [("weight", weight)] }

    /// Rows for `indices`, shaped `shape + [width]`.
    public func callAsFunction(_ indices: [Int32], shape: [Int]) -> Tensor {
        forward { Tensor.embedding(weight, indices: indices, shape: shape) }
    }
}
