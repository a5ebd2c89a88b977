import Foundation

/// Elementwise functions: exp, log, sqrt, tanh, square, ReLU and GPT-2's GELU (tanh approximation).
extension Tensor {
    @inline(__always)
    private func mapped(_ vector: (VectorMath.Vector) -> VectorMath.Vector, _ scalar: (Float) -> Float) -> Tensor {
        let input = contiguous()
        let result = Tensor(uninitializedShape: shape)
        ElementwiseKernels.map(input.floatPointer, result.floatPointer, count: count, vector, scalar)
        return result
    }

    /// e^x.
    public func exp() -> Tensor {
        let result = mapped({ VectorMath.exp($0) }, { VectorMath.exp($0) })
        return Tensor.record(result, operation: "exp", inputs: [self]) { [$0 * result.detached()] }
    }

    /// Natural logarithm.
    public func log() -> Tensor {
        let result = mapped({ v in VectorMath.Vector((0..<8).map { Foundation.log(v[$0]) }) }, { Foundation.log($0) })
        return Tensor.record(result, operation: "log", inputs: [self]) { [$0 / self.detached()] }
    }

    /// Square root.
    public func sqrt() -> Tensor {
        let result = mapped({ $0.squareRoot() }, { $0.squareRoot() })
        return Tensor.record(result, operation: "sqrt", inputs: [self]) { [$0 / (result.detached() * 2)] }
    }

    /// x².
    public func squared() -> Tensor {
        let result = mapped({ $0 * $0 }, { $0 * $0 })
        return Tensor.record(result, operation: "square", inputs: [self]) { [$0 * self.detached() * 2] }
    }

    /// Hyperbolic tangent.
    public func tanh() -> Tensor {
        let result = mapped({ VectorMath.tanh($0) }, { VectorMath.tanh($0) })
        return Tensor.record(result, operation: "tanh", inputs: [self]) { gradient in
            let y = result.detached()
            let derivative = Tensor.applyScalar(Tensor.applyBinary(y, y, .multiply), -1, .multiply) + 1
            return [gradient * derivative]
        }
    }

    /// Swift.max(x, 0).
    public func relu() -> Tensor {
        let zero = VectorMath.Vector.zero
        let result = mapped({ $0.replacing(with: zero, where: $0 .< zero) }, { Swift.max($0, 0) })
        return Tensor.record(result, operation: "relu", inputs: [self]) { gradient in
            let g = gradient.contiguous()
            let x = self.contiguous()
            let dx = Tensor(uninitializedShape: self.shape)
            ElementwiseKernels.zip(g.floatPointer, x.floatPointer, dx.floatPointer, count: dx.count,
                                   { g, x in g.replacing(with: 0, where: x .<= 0) }, { g, x in x > 0 ? g : 0 })
            return [dx]
        }
    }

    /// GELU, tanh approximation (GPT-2's `gelu_new`): 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))).
    public func gelu() -> Tensor {
        if let placed = PlacementDeduction.dispatch(.gelu(self)) { return placed }
        let result = mapped({ GELU.forward($0) }, { GELU.forward(VectorMath.Vector(repeating: $0))[0] })
        return Tensor.record(result, operation: "gelu", inputs: [self]) { gradient in
            let g = gradient.contiguous()
            let x = self.contiguous()
            let dx = Tensor(uninitializedShape: self.shape)
            ElementwiseKernels.zip(g.floatPointer, x.floatPointer, dx.floatPointer, count: dx.count,
                                   { g, x in g * GELU.derivative(x) }, { g, x in g * GELU.derivative(VectorMath.Vector(repeating: x))[0] })
            return [dx]
        }
    }
}

/// GPT-2's GELU (tanh approximation) and its derivative, 8 lanes at a time.
enum GELU {
    static let k0: Float = 0.797_884_56  // √(2/π)
    static let k1: Float = 0.044_715

    @inline(__always)
    static func forward(_ x: VectorMath.Vector) -> VectorMath.Vector {
        let cube: VectorMath.Vector = x * x * x
        let u: VectorMath.Vector = k0 * (x + k1 * cube)
        return 0.5 * x * (1 + VectorMath.tanh(u))
    }

    @inline(__always)
    static func derivative(_ x: VectorMath.Vector) -> VectorMath.Vector {
        let x2 = x * x
        let inner: VectorMath.Vector = k0 * (x + k1 * x2 * x)
        let t = VectorMath.tanh(inner)
        let sech2: VectorMath.Vector = 1 - t * t
        let innerDerivative: VectorMath.Vector = k0 * (1 + 3 * k1 * x2)
        let half: VectorMath.Vector = 0.5 * (1 + t)
        return half + 0.5 * x * sech2 * innerDerivative
    }
}
