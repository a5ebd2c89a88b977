/// Layer normalisation's row kernels, shared by ``Tensor/layerNorm(_:weight:bias:epsilon:)`` and the fused
/// ``Tensor/residualLayerNorm(_:_:weight:bias:epsilon:)`` so the two give bit-identical results.
///
/// Every loop runs 8 lanes at a time: a scalar `Float` reduction cannot be vectorised by the compiler (it may
/// not reorder the additions), and backward's two reductions and two accumulations per element ran scalar,
/// 2.5–10× the forward's time.
enum LayerNormKernel {
    typealias Vector = VectorMath.Vector

    /// Normalises one row of `n` values: out = (x − mean)·inverseStd·weight + bias. Returns (mean, inverseStd).
    @inline(__always)
    static func normalize(_ x: UnsafePointer<Float>, _ out: UnsafeMutablePointer<Float>, _ n: Int,
                          weight: UnsafePointer<Float>, bias: UnsafePointer<Float>, epsilon: Float) -> (mean: Float, inverseStd: Float) {
        let mean = VectorMath.sum(x, n) / Float(n)
        let m = Vector(repeating: mean)
        var squares = Vector.zero
        var j = 0
        while j + 8 <= n { let d = VectorMath.load(x + j) - m; squares += d * d; j += 8 }
        var variance = squares.sum()
        while j < n { let d = x[j] - mean; variance += d * d; j += 1 }
        let inverseStd = 1 / (variance / Float(n) + epsilon).squareRoot()
        let s = Vector(repeating: inverseStd)
        j = 0
        while j + 8 <= n {
            VectorMath.store((VectorMath.load(x + j) - m) * s * VectorMath.load(weight + j) + VectorMath.load(bias + j), out + j)
            j += 8
        }
        while j < n { out[j] = (x[j] - mean) * inverseStd * weight[j] + bias[j]; j += 1 }
        return (mean, inverseStd)
    }

    /// Normalises `rows` rows of `input` into `output`, saving each row's mean and inverse standard deviation.
    static func forward(_ input: UnsafePointer<Float>, _ output: UnsafeMutablePointer<Float>, rows: Int, n: Int,
                        weight: UnsafePointer<Float>, bias: UnsafePointer<Float>, epsilon: Float,
                        means: UnsafeMutablePointer<Float>, inverseStds: UnsafeMutablePointer<Float>) {
        ComputePool.current.parallelFor(rows, minimumChunk: 16) { range in
            for r in range {
                (means[r], inverseStds[r]) = normalize(input + r * n, output + r * n, n, weight: weight, bias: bias, epsilon: epsilon)
            }
        }
    }

    /// The gradients (dx, dweight, dbias) of layer norm given the forward's input, weight and saved statistics.
    static func backward(input: Tensor, weight: Tensor, means: Tensor, inverseStds: Tensor, gradient: Tensor) -> [Tensor] {
        let n = weight.count, rows = input.count / n
        let xp = input.floatPointer, wp = weight.floatPointer
        let mp = means.floatPointer, sp = inverseStds.floatPointer
        let g = gradient.contiguous()
        let gp = g.floatPointer
        let dx = Tensor(uninitializedShape: input.shape)
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
                let m = Vector(repeating: mean), s = Vector(repeating: inverseStd)
                var sumGLanes = Vector.zero, sumGXhatLanes = Vector.zero
                var j = 0
                while j + 8 <= n {
                    let xhat = (VectorMath.load(row + j) - m) * s
                    let gj = VectorMath.load(gr + j)
                    let gw = gj * VectorMath.load(wp + j)
                    sumGLanes += gw
                    sumGXhatLanes += gw * xhat
                    VectorMath.store(VectorMath.load(dw + j) + gj * xhat, dw + j)
                    VectorMath.store(VectorMath.load(db + j) + gj, db + j)
                    j += 8
                }
                var sumG = sumGLanes.sum(), sumGXhat = sumGXhatLanes.sum()
                while j < n {
                    let xhat = (row[j] - mean) * inverseStd
                    let gw = gr[j] * wp[j]
                    sumG += gw
                    sumGXhat += gw * xhat
                    dw[j] += gr[j] * xhat
                    db[j] += gr[j]
                    j += 1
                }
                let meanG = sumG / Float(n), meanGXhat = sumGXhat / Float(n)
                let mg = Vector(repeating: meanG), mgx = Vector(repeating: meanGXhat)
                j = 0
                while j + 8 <= n {
                    let xhat = (VectorMath.load(row + j) - m) * s
                    VectorMath.store(s * (VectorMath.load(gr + j) * VectorMath.load(wp + j) - mg - xhat * mgx), out + j)
                    j += 8
                }
                while j < n {
                    let xhat = (row[j] - mean) * inverseStd
                    out[j] = inverseStd * (gr[j] * wp[j] - meanG - xhat * meanGXhat)
                    j += 1
                }
            }
        }
        let dWeight = Tensor.zeros([n]), dBias = Tensor.zeros([n])
        let dwp = dWeight.floatPointer, dbp = dBias.floatPointer
        for part in 0..<parts {
            for j in 0..<n {
                dwp[j] += pp[part * 2 * n + j]
                dbp[j] += pp[part * 2 * n + n + j]
            }
        }
        return [dx, dWeight, dBias]
    }
}
