/// Layer normalisation over the last axis, fused forward and backward, optionally with a residual add.
extension Tensor {
    /// y = (x − mean) / sqrt(var + eps) · weight + bias over the last axis (biased variance, as PyTorch).
    public static func layerNorm(_ x: Tensor, weight: Tensor, bias: Tensor, epsilon: Float = 1e-5) -> Tensor {
        if let placed = PlacementDeduction.dispatch(.layerNorm(x: x, weight: weight, bias: bias, epsilon: epsilon)) { return placed }
        return normalized(x.contiguous(), recordingAs: x, weight: weight, bias: bias, epsilon: epsilon)
    }

    /// The pre-LN transformer's residual step in one pass: sum = residual + delta, and layerNorm(sum).
    ///
    /// Each row is added and normalised while it is in cache, where the unfused composition writes the sum and
    /// reads it back. Both results are bit-identical to `residual + delta` followed by
    /// ``layerNorm(_:weight:bias:epsilon:)`` (the same addition, then the same row kernel), and so are their
    /// gradients: the sum is recorded as an addition, the normalised output as a layer norm of it. On distributed
    /// tensors (tensor or sequence parallelism) it is that composition, whose operators have placement rules.
    public static func residualLayerNorm(_ residual: Tensor, _ delta: Tensor, weight: Tensor, bias: Tensor,
                                         epsilon: Float = 1e-5) -> (sum: Tensor, normalized: Tensor) {
        guard residual.shape == delta.shape, !PlacementDeduction.wouldDispatch([residual, delta, weight, bias]) else {
            let sum = residual + delta
            return (sum, layerNorm(sum, weight: weight, bias: bias, epsilon: epsilon))
        }
        let n = residual.shape.last ?? 1
        precondition(weight.shape == [n] && bias.shape == [n], "residualLayerNorm: weight \(weight.shape) and bias \(bias.shape) must be [\(n)]")
        let left = residual.contiguous(), right = delta.contiguous()
        let rows = left.count / n
        let sum = Tensor(uninitializedShape: residual.shape), result = Tensor(uninitializedShape: residual.shape)
        let statistics = Statistics(rows: rows)
        let contiguousWeight = weight.contiguous(), contiguousBias = bias.contiguous()
        let ap = left.floatPointer, dp = right.floatPointer, sp = sum.floatPointer, yp = result.floatPointer
        let wp = contiguousWeight.floatPointer, bp = contiguousBias.floatPointer
        let mp = statistics.means.floatPointer, ip = statistics.inverseStds.floatPointer
        ComputePool.current.parallelFor(rows, minimumChunk: 16) { range in
            for r in range {
                let a = ap + r * n, d = dp + r * n, s = sp + r * n
                var j = 0
                while j + 8 <= n { VectorMath.store(VectorMath.load(a + j) + VectorMath.load(d + j), s + j); j += 8 }
                while j < n { s[j] = a[j] + d[j]; j += 1 }
                (mp[r], ip[r]) = LayerNormKernel.normalize(s, yp + r * n, n, weight: wp, bias: bp, epsilon: epsilon)
            }
        }
        let savedSum = sum.detached()
        record(sum, operation: "add", inputs: [residual, delta]) { [$0, $0] }
        let normalized = record(result, operation: "layerNorm", inputs: [sum, weight, bias]) { gradient in
            LayerNormKernel.backward(input: savedSum, weight: contiguousWeight, means: statistics.means,
                                     inverseStds: statistics.inverseStds, gradient: gradient)
        }
        return (sum, normalized)
    }

    /// Layer norm of the contiguous `input`, recorded on the tape as an operation on `x`.
    private static func normalized(_ input: Tensor, recordingAs x: Tensor, weight: Tensor, bias: Tensor, epsilon: Float) -> Tensor {
        let n = x.shape.last ?? 1
        precondition(weight.shape == [n] && bias.shape == [n], "layerNorm: weight \(weight.shape) and bias \(bias.shape) must be [\(n)]")
        let rows = input.count / n
        let result = Tensor(uninitializedShape: x.shape)
        let statistics = Statistics(rows: rows)
        // Parameters are contiguous leaves; the closure below keeps these alive for backward.
        let contiguousWeight = weight.contiguous(), contiguousBias = bias.contiguous()
        LayerNormKernel.forward(input.floatPointer, result.floatPointer, rows: rows, n: n,
                                weight: contiguousWeight.floatPointer, bias: contiguousBias.floatPointer, epsilon: epsilon,
                                means: statistics.means.floatPointer, inverseStds: statistics.inverseStds.floatPointer)
        return record(result, operation: "layerNorm", inputs: [x, weight, bias]) { gradient in
            LayerNormKernel.backward(input: input, weight: contiguousWeight, means: statistics.means,
                                     inverseStds: statistics.inverseStds, gradient: gradient)
        }
    }

    /// Each row's mean and inverse standard deviation, saved for backward.
    private struct Statistics {
        let means: Tensor, inverseStds: Tensor
        init(rows: Int) {
            means = Tensor(uninitializedShape: [rows])
            inverseStds = Tensor(uninitializedShape: [rows])
        }
    }
}
