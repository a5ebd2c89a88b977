/// The MLP's bias add and GELU as one operation: the bias is added inside GELU's pass instead of in a pass of
/// its own, and backward computes GELU's derivative and the bias gradient (the column sums of that gradient)
/// in one pass instead of two.
extension Tensor {
    /// GELU(x + bias) (GPT-2's tanh approximation) with `bias` repeated along x's leading axes; x is [..., n].
    ///
    /// Saves only x (the bias-free linear output), as GELU alone saves its input. Output and gradients are
    /// bit-identical to `(x + bias).gelu()`: the same additions and the same GELU kernels per element, and the
    /// bias gradient summed over rows in row order per column, as `sum(axes:)` does. On distributed tensors
    /// (tensor parallelism) it is that composition, whose operators have placement rules.
    public static func biasGELU(_ x: Tensor, bias: Tensor) -> Tensor {
        let n = x.shape.last ?? 1
        guard bias.shape == [n], n > 0, !PlacementDeduction.wouldDispatch([x, bias]) else { return (x + bias).gelu() }
        let input = x.contiguous(), contiguousBias = bias.contiguous()
        let rows = input.count / n
        let result = Tensor(uninitializedShape: x.shape)
        ElementwiseKernels.zipRows(input.floatPointer, contiguousBias.floatPointer, result.floatPointer, rows: rows, length: n,
                                   { GELU.forward($0 + $1) }, { GELU.forward(VectorMath.Vector(repeating: $0 + $1))[0] })
        return record(result, operation: "biasGELU", inputs: [x, bias]) { gradient in
            let g = gradient.contiguous()
            let dx = Tensor(uninitializedShape: input.shape), dBias = Tensor(uninitializedShape: [n])
            let xp = input.floatPointer, bp = contiguousBias.floatPointer, gp = g.floatPointer
            let dxp = dx.floatPointer, dbp = dBias.floatPointer
            // Split by columns, so each bias element is summed over all rows in order by one thread.
            ComputePool.current.parallelFor(n, minimumChunk: 256) { columns in
                let c0 = columns.lowerBound, width = columns.count
                (dbp + c0).update(repeating: 0, count: width)
                for r in 0..<rows {
                    let offset = r * n + c0
                    let xr = xp + offset, gr = gp + offset, dr = dxp + offset, b = bp + c0, db = dbp + c0
                    var j = 0
                    while j + 8 <= width {
                        let du = VectorMath.load(gr + j) * GELU.derivative(VectorMath.load(xr + j) + VectorMath.load(b + j))
                        VectorMath.store(du, dr + j)
                        VectorMath.store(VectorMath.load(db + j) + du, db + j)
                        j += 8
                    }
                    while j < width {
                        let du = gr[j] * GELU.derivative(VectorMath.Vector(repeating: xr[j] + b[j]))[0]
                        dr[j] = du
                        db[j] += du
                        j += 1
                    }
                }
            }
            return [dx, dBias]
        }
    }
}
