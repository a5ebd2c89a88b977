/// Layer normalisation over the last axis, fused forward and backward, optionally with a residual add.
extension Tensor {
    /// y = (x − mean) / sqrt(var + eps) · weight + bias over the last axis (biased variance, as PyTorch).
    public static func layerNorm(_ x: Tensor, weight: Tensor, bias: Tensor, epsilon: Float = 1e-5) -> Tensor {
        if let placed = PlacementDeduction.dispatch(.layerNorm(x: x, weight: weight, bias: bias, epsilon: epsilon)) { return placed }
        let n = x.shape.last ?? 1
        precondition(weight.shape == [n] && bias.shape == [n], "layerNorm: weight \(weight.shape) and bias \(bias.shape) must be [\(n)]")
        let input = x.contiguous()
        let rows = input.count / n
        let result = Tensor(uninitializedShape: x.shape)
        let means = Tensor(uninitializedShape: [rows]), inverseStds = Tensor(uninitializedShape: [rows])
        let xp = input.floatPointer, yp = result.floatPointer
        // Parameters are contiguous leaves; the closure below keeps these alive for backward.
        let contiguousWeight = weight.contiguous(), contiguousBias = bias.contiguous()
        let wp = contiguousWeight.floatPointer, bp = contiguousBias.floatPointer
        let mp = means.floatPointer, sp = inverseStds.floatPointer
        ComputePool.current.parallelFor(rows, minimumChunk: 16) { range in
            for r in range {
                let row = xp + r * n, out = yp + r * n
                let mean = VectorMath.sum(row, n) / Float(n)
                var variance: Float = 0
                for j in 0..<n { let d = row[j] - mean; variance += d * d }
                let inverseStd = 1 / (variance / Float(n) + epsilon).squareRoot()
                mp[r] = mean; sp[r] = inverseStd
                for j in 0..<n { out[j] = (row[j] - mean) * inverseStd * wp[j] + bp[j] }
            }
        }
        return record(result, operation: "layerNorm", inputs: [x, weight, bias]) { gradient in
            // Pointers are re-derived from the tensors so the closure keeps the saved tensors alive.
            let xp = input.floatPointer, wp = contiguousWeight.floatPointer
            let mp = means.floatPointer, sp = inverseStds.floatPointer
            let g = gradient.contiguous()
            let gp = g.floatPointer
            let dx = Tensor(uninitializedShape: x.shape)
            let dxp = dx.floatPointer
            let pool = ComputePool.current
            // Per-thread partial sums for dweight/dbias, reduced after the loop (deterministic order).
            let parts = pool.threadCount
            let partials = Tensor.zeros([parts, 2, n])
            let pp = partials.floatPointer
            pool.runParts { part in
                let start = rows * part / parts, end = rows * (part + 1) / parts
                let dw = pp + part * 2 * n, db = dw + n
                for r in start..<end {
                    let row = xp + r * n, gr = gp + r * n, out = dxp + r * n
                    let mean = mp[r], inverseStd = sp[r]
                    var sumG: Float = 0, sumGXhat: Float = 0
                    for j in 0..<n {
                        let xhat = (row[j] - mean) * inverseStd
                        let gw = gr[j] * wp[j]
                        sumG += gw
                        sumGXhat += gw * xhat
                        dw[j] += gr[j] * xhat
                        db[j] += gr[j]
                    }
                    let meanG = sumG / Float(n), meanGXhat = sumGXhat / Float(n)
                    for j in 0..<n {
                        let xhat = (row[j] - mean) * inverseStd
                        out[j] = inverseStd * (gr[j] * wp[j] - meanG - xhat * meanGXhat)
                    }
                }
            }
            let dWeight = Tensor.zeros([n]), dBias = Tensor.zeros([n])
            for part in 0..<parts {
                for j in 0..<n {
                    dWeight.floatPointer[j] += pp[part * 2 * n + j]
                    dBias.floatPointer[j] += pp[part * 2 * n + n + j]
                }
            }
            return [dx, dWeight, dBias]
        }
    }
}
