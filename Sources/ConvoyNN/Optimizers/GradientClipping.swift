import ConvoyTensor

/// Clipping of gradients by their global L2 norm.
public enum GradientClipping {
    /// The L2 norm over all gradients, accumulated in Double in parameter order (deterministic).
    public static func globalNorm(_ parameters: [Parameter]) -> Double {
        sumOfSquaredGradients(parameters).squareRoot()
    }

    /// Σ g² over the gradients of `parameters` (those that have one), each summed in Double in element order,
    /// then added in parameter order (deterministic). Every norm in Convoy is built from this.
    public static func sumOfSquaredGradients(_ parameters: [Parameter]) -> Double {
        var total = 0.0
        for parameter in parameters {
            guard let grad = parameter.grad else { continue }
            total += sumOfSquares(grad)
        }
        return total
    }

    /// Σ x² of `tensor`'s elements, accumulated in Double in element order.
    public static func sumOfSquares(_ tensor: Tensor) -> Double {
        let values = tensor.contiguous()
        return withExtendedLifetime(values) {
            let pointer = values.floatPointer
            var sum = 0.0
            for i in 0..<values.count { sum += Double(pointer[i]) * Double(pointer[i]) }
            return sum
        }
    }

    /// Scales every gradient so the global norm is at most `maxNorm`; returns the norm before clipping.
    @discardableResult
    public static func clip(_ parameters: [Parameter], maxNorm: Float) -> Double {
        let norm = globalNorm(parameters)
        let scale = Double(maxNorm) / (norm + 1e-6)
        if scale < 1 {
            for parameter in parameters { parameter.grad?.scaleInPlace(Float(scale)) }
        }
        return norm
    }
}
