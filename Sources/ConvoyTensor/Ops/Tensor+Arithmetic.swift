/// Elementwise arithmetic with NumPy broadcasting, and scalar arithmetic. Gradients of broadcast inputs are
/// summed back to their shapes.
extension Tensor {
    enum BinaryOperator {
        case add, subtract, multiply, divide
    }

    /// Forward kernel of a binary operation (not recorded).
    static func applyBinary(_ a: Tensor, _ b: Tensor, _ op: BinaryOperator) -> Tensor {
        guard let outputShape = Shape.broadcast(a.shape, b.shape) else {
            preconditionFailure("shapes \(a.shape) and \(b.shape) cannot be broadcast together")
        }
        let result = Tensor(uninitializedShape: outputShape)
        let out = result.floatPointer
        let n = result.count
        let lhs = a.contiguous(), rhs = b.contiguous()
        if lhs.shape == outputShape && rhs.shape == outputShape {
            let x = lhs.floatPointer, y = rhs.floatPointer
            switch op {
            case .add: ElementwiseKernels.zip(x, y, out, count: n, { $0 + $1 }, { $0 + $1 })
            case .subtract: ElementwiseKernels.zip(x, y, out, count: n, { $0 - $1 }, { $0 - $1 })
            case .multiply: ElementwiseKernels.zip(x, y, out, count: n, { $0 * $1 }, { $0 * $1 })
            case .divide: ElementwiseKernels.zip(x, y, out, count: n, { $0 / $1 }, { $0 / $1 })
            }
            return result
        }
        if lhs.shape == outputShape && rhs.count == 1 {
            let s = rhs.floatPointer[0]
            return applyScalar(lhs, s, op)
        }
        if lhs.shape == outputShape, rhs.rank <= outputShape.count,
           Array(outputShape.suffix(rhs.rank)) == rhs.shape || (rhs.shape.drop { $0 == 1 }.elementsEqual(outputShape.suffix(rhs.shape.drop { $0 == 1 }.count)) && rhs.count == outputShape.last) {
            // rhs repeats along leading axes: a row kernel.
            let length = rhs.count
            let x = lhs.floatPointer, row = rhs.floatPointer
            let rows = n / Swift.max(length, 1)
            switch op {
            case .add: ElementwiseKernels.zipRows(x, row, out, rows: rows, length: length, { $0 + $1 }, { $0 + $1 })
            case .subtract: ElementwiseKernels.zipRows(x, row, out, rows: rows, length: length, { $0 - $1 }, { $0 - $1 })
            case .multiply: ElementwiseKernels.zipRows(x, row, out, rows: rows, length: length, { $0 * $1 }, { $0 * $1 })
            case .divide: ElementwiseKernels.zipRows(x, row, out, rows: rows, length: length, { $0 / $1 }, { $0 / $1 })
            }
            return result
        }
        // General broadcasting: materialise both operands at the output shape.
        let left = withNoGrad { lhs.broadcast(to: outputShape).contiguous() }
        let right = withNoGrad { rhs.broadcast(to: outputShape).contiguous() }
        return applyBinary(left, right, op)
    }

    static func applyScalar(_ a: Tensor, _ s: Float, _ op: BinaryOperator) -> Tensor {
        let input = a.contiguous()
        let result = Tensor(uninitializedShape: a.shape)
        let x = input.floatPointer, out = result.floatPointer, n = result.count
        let v = VectorMath.Vector(repeating: s)
        switch op {
        case .add: ElementwiseKernels.map(x, out, count: n, { $0 + v }, { $0 + s })
        case .subtract: ElementwiseKernels.map(x, out, count: n, { $0 - v }, { $0 - s })
        case .multiply: ElementwiseKernels.map(x, out, count: n, { $0 * v }, { $0 * s })
        case .divide: ElementwiseKernels.map(x, out, count: n, { $0 / v }, { $0 / s })
        }
        return result
    }

    /// Sums a gradient over the axes along which an input of `targetShape` was broadcast.
    public func summed(toShape targetShape: [Int]) -> Tensor {
        if shape == targetShape { return self }
        let lead = rank - targetShape.count
        precondition(lead >= 0, "cannot sum shape \(shape) down to \(targetShape)")
        var axes = Array(0..<lead)
        for (i, extent) in targetShape.enumerated() where extent == 1 && shape[lead + i] != 1 {
            axes.append(lead + i)
        }
        let reduced = axes.isEmpty ? self : sum(axes: axes, keepingDimensions: true)
        return reduced.reshaped(targetShape)
    }

    public static func + (a: Tensor, b: Tensor) -> Tensor {
        if let placed = PlacementDeduction.dispatch(.add(a, b)) { return placed }
        let result = applyBinary(a, b, .add)
        // Backward needs the shapes only: capturing a and b would keep their memory until backward.
        let aShape = a.shape, bShape = b.shape
        return record(result, operation: "add", inputs: [a, b]) { gradient in
            [gradient.summed(toShape: aShape), gradient.summed(toShape: bShape)]
        }
    }

    public static func - (a: Tensor, b: Tensor) -> Tensor {
        let result = applyBinary(a, b, .subtract)
        let aShape = a.shape, bShape = b.shape
        return record(result, operation: "subtract", inputs: [a, b]) { gradient in
            [gradient.summed(toShape: aShape), (-gradient).summed(toShape: bShape)]
        }
    }

    public static func * (a: Tensor, b: Tensor) -> Tensor {
        let result = applyBinary(a, b, .multiply)
        return record(result, operation: "multiply", inputs: [a, b]) { gradient in
            [a.requiresGrad ? (gradient * b.detached()).summed(toShape: a.shape) : nil,
             b.requiresGrad ? (gradient * a.detached()).summed(toShape: b.shape) : nil]
        }
    }

    public static func / (a: Tensor, b: Tensor) -> Tensor {
        let result = applyBinary(a, b, .divide)
        // The numerator's values are not needed (the quotient is): keep only its shape and whether it needs a gradient.
        let aShape = a.shape, aNeedsGradient = a.requiresGrad
        return record(result, operation: "divide", inputs: [a, b]) { gradient in
            let denominator = b.detached()
            return [aNeedsGradient ? (gradient / denominator).summed(toShape: aShape) : nil,
                    b.requiresGrad ? (-(gradient * result.detached() / denominator)).summed(toShape: b.shape) : nil]
        }
    }

    public static func + (a: Tensor, s: Float) -> Tensor {
        record(applyScalar(a, s, .add), operation: "add scalar", inputs: [a]) { [$0] }
    }
    public static func + (s: Float, a: Tensor) -> Tensor { a + s }
    public static func - (a: Tensor, s: Float) -> Tensor { a + (-s) }
    public static func - (s: Float, a: Tensor) -> Tensor { (-a) + s }
    public static func * (a: Tensor, s: Float) -> Tensor {
        record(applyScalar(a, s, .multiply), operation: "multiply scalar", inputs: [a]) { [$0 * s] }
    }
    public static func * (s: Float, a: Tensor) -> Tensor { a * s }
    public static func / (a: Tensor, s: Float) -> Tensor { a * (1 / s) }
    public static prefix func - (a: Tensor) -> Tensor { a * -1 }

    /// self += other, in place and not recorded (gradient accumulation, optimizer updates).
    public func addInPlace(_ other: Tensor, scale: Float = 1) {
        precondition(isContiguous && dtype == .float32, "addInPlace needs a contiguous float32 destination")
        let source = (other.shape == shape ? other : withNoGrad { other.broadcast(to: shape) }).contiguous()
        let x = floatPointer, y = source.floatPointer
        let s = VectorMath.Vector(repeating: scale)
        if scale == 1 {
            ElementwiseKernels.zip(x, y, x, count: count, { $0 + $1 }, { $0 + $1 })
        } else {
            ElementwiseKernels.zip(x, y, x, count: count, { $0 + $1 * s }, { $0 + $1 * scale })
        }
    }

    /// self *= s, in place and not recorded.
    public func scaleInPlace(_ s: Float) {
        precondition(isContiguous && dtype == .float32, "scaleInPlace needs a contiguous float32 tensor")
        let v = VectorMath.Vector(repeating: s)
        ElementwiseKernels.map(floatPointer, floatPointer, count: count, { $0 * v }, { $0 * s })
    }

    /// Sets every element to `value`, in place and not recorded.
    public func fill(_ value: Float) {
        precondition(isContiguous && dtype == .float32, "fill needs a contiguous float32 tensor")
        floatPointer.update(repeating: value, count: count)
    }
}
