import Foundation

/// Softmax and log-softmax over the last axis.
extension Tensor {
    /// Row-wise kernel over the last axis of a contiguous tensor.
    @inline(__always)
    static func forEachRow(_ tensor: Tensor, _ body: (Int) -> Void) {
        let length = tensor.shape.last ?? 1
        let rows = tensor.count / Swift.max(length, 1)
        ComputePool.current.parallelFor(rows, minimumChunk: Swift.max(1, 4096 / Swift.max(length, 1))) { range in
            for r in range { body(r) }
        }
    }

    /// Writes softmax(input[0..<n]) into output (may alias input).
    @inline(__always)
    static func softmaxRow(_ input: UnsafePointer<Float>, _ output: UnsafeMutablePointer<Float>, _ n: Int) {
        let maximum = VectorMath.max(input, n)
        let m = VectorMath.Vector(repeating: maximum)
        var total = VectorMath.Vector.zero
        var j = 0
        while j + 8 <= n {
            let e = VectorMath.exp(VectorMath.load(input + j) - m)
            VectorMath.store(e, output + j)
            total += e
            j += 8
        }
        var sum = total.sum()
        while j < n { let e = VectorMath.exp(input[j] - maximum); output[j] = e; sum += e; j += 1 }
        let inverse = 1 / sum
        j = 0
        let s = VectorMath.Vector(repeating: inverse)
        while j + 8 <= n { VectorMath.store(VectorMath.load(output + j) * s, output + j); j += 8 }
        while j < n { output[j] *= inverse; j += 1 }
    }

    /// Softmax over the last axis.
    public func softmax() -> Tensor {
        let input = contiguous()
        let result = Tensor(uninitializedShape: shape)
        let n = shape.last ?? 1
        let x = input.floatPointer, y = result.floatPointer
        Tensor.forEachRow(result) { r in Tensor.softmaxRow(x + r * n, y + r * n, n) }
        return Tensor.record(result, operation: "softmax", inputs: [self]) { gradient in
            let g = gradient.contiguous()
            let dx = Tensor(uninitializedShape: result.shape)
            let gp = g.floatPointer, yp = result.floatPointer, dp = dx.floatPointer
            Tensor.forEachRow(dx) { r in
                let row = r * n
                let dot = VectorMath.dot(gp + row, yp + row, n)
                for j in 0..<n { dp[row + j] = yp[row + j] * (gp[row + j] - dot) }
            }
            return [dx]
        }
    }

    /// log(softmax(x)) over the last axis, computed stably.
    public func logSoftmax() -> Tensor {
        let input = contiguous()
        let result = Tensor(uninitializedShape: shape)
        let n = shape.last ?? 1
        let x = input.floatPointer, y = result.floatPointer
        Tensor.forEachRow(result) { r in
            let row = x + r * n, out = y + r * n
            let maximum = VectorMath.max(row, n)
            var sum: Float = 0
            for j in 0..<n { sum += VectorMath.exp(row[j] - maximum) }
            // (x − max) − log Σ keeps full precision for large logits, unlike x − (max + log Σ).
            let logSum = Foundation.log(sum)
            for j in 0..<n { out[j] = (row[j] - maximum) - logSum }
        }
        return Tensor.record(result, operation: "logSoftmax", inputs: [self]) { gradient in
            let g = gradient.contiguous()
            let dx = Tensor(uninitializedShape: result.shape)
            let gp = g.floatPointer, yp = result.floatPointer, dp = dx.floatPointer
            Tensor.forEachRow(dx) { r in
                let row = r * n
                let total = VectorMath.sum(gp + row, n)
                for j in 0..<n { dp[row + j] = gp[row + j] - Foundation.exp(yp[row + j]) * total }
            }
            return [dx]
        }
    }
}
