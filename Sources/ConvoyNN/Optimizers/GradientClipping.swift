import ConvoyTensor

/// Clipping of gradients by their global L2 norm.
public enum GradientClipping {
    /// The L2 norm over all gradients, accumulated in Double in parameter order (deterministic).
    public static func globalNorm(_ parameters: [Parameter]) -> Double {
        var total = 0.0
        for parameter in parameters {
            guard let grad = parameter.grad else { continue }
            let contiguousGradient = grad.contiguous()
            defer { withExtendedLifetime(contiguousGradient) {} }
            let g = contiguousGradient.floatPointer
            var partial = 0.0
            for i in 0..<grad.count { partial += Double(g[i]) * Double(g[i]) }
            total += partial
        }
        return total.squareRoot()
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
