/// Matrix products through BLAS: plain, batched, and the fused linear layer y = x·W + b. Each runs at the
/// thread's ``ComputePrecision`` (fp32, or bf16 operands with fp32 accumulation), forward and backward alike.
extension Tensor {
    /// How a matrix (or a batch of matrices, leading axes flattened) is handed to sgemm without copying:
    /// row-major, or row-major of its transpose.
    struct MatrixOperand {
        let tensor: Tensor
        let rows: Int
        let columns: Int
        let transposed: Bool
        let leadingDimension: Int
        let batchStride: Int

        init(_ input: Tensor) {
            precondition(input.rank >= 2, "matrix operand needs rank ≥ 2, got shape \(input.shape)")
            let r = input.rank
            rows = input.shape[r - 2]
            columns = input.shape[r - 1]
            let batchShape = Array(input.shape.dropLast(2))
            let lastTwo = Array(input.strides.suffix(2))
            // Batch axes must be packed densely one matrix after another.
            func batchIsDense(_ t: Tensor, matrixSize: Int) -> Bool {
                var expected = matrixSize
                for axis in stride(from: t.rank - 3, through: 0, by: -1) where t.shape[axis] != 1 {
                    if t.strides[axis] != expected { return false }
                    expected *= t.shape[axis]
                }
                return true
            }
            let matrixSize = rows * columns
            if (lastTwo[1] == 1 || columns == 1) && (lastTwo[0] == columns || rows == 1) && batchIsDense(input, matrixSize: matrixSize) {
                tensor = input; transposed = false; leadingDimension = Swift.max(columns, 1)
            } else if (lastTwo[0] == 1 || rows == 1) && (lastTwo[1] == rows || columns == 1) && batchIsDense(input, matrixSize: matrixSize) {
                tensor = input; transposed = true; leadingDimension = Swift.max(rows, 1)
            } else {
                tensor = withNoGrad { input.contiguous() }; transposed = false; leadingDimension = Swift.max(columns, 1)
            }
            batchStride = batchShape.isEmpty ? 0 : matrixSize
        }
    }

    /// Matrix product. `a` is [..., M, K]; `b` is [K, N] (shared by every leading index of `a`) or
    /// [..., K, N] with the same leading axes as `a` (batched). Transposed views are used without copying.
    public func matmul(_ other: Tensor) -> Tensor {
        if let placed = PlacementDeduction.dispatch(.matmul(self, other)) { return placed }
        let a = self, b = other
        precondition(a.rank >= 2 && b.rank >= 2, "matmul needs operands of rank ≥ 2, got \(a.shape) and \(b.shape)")
        let m = a.shape[a.rank - 2], k = a.shape[a.rank - 1]
        precondition(b.shape[b.rank - 2] == k, "matmul: inner dimensions differ, \(a.shape) · \(b.shape)")
        let n = b.shape[b.rank - 1]
        let batchShape = Array(a.shape.dropLast(2))
        let precision = ComputePrecision.current
        let result: Tensor
        if b.rank == 2 {
            // Fold a's leading axes into rows: one large GEMM.
            let aFlat = a.rank == 2 ? a : withNoGrad { a.contiguous().reshaped([-1, k]) }
            let left = MatrixOperand(aFlat), right = MatrixOperand(b)
            result = Tensor(uninitializedShape: batchShape + [m, n])
            BLAS.gemm(precision: precision, transposeA: left.transposed, transposeB: right.transposed, m: aFlat.shape[0], n: n, k: k,
                       a: left.tensor.floatPointer, lda: left.leadingDimension,
                       b: right.tensor.floatPointer, ldb: right.leadingDimension,
                       c: result.floatPointer, ldc: n)
        } else {
            precondition(Array(b.shape.dropLast(2)) == batchShape, "batched matmul needs equal batch axes, got \(a.shape) and \(b.shape)")
            let left = MatrixOperand(a), right = MatrixOperand(b)
            result = Tensor(uninitializedShape: batchShape + [m, n])
            let batches = Shape.count(batchShape)
            let pa = left.tensor.floatPointer, pb = right.tensor.floatPointer, pc = result.floatPointer
            let pool = ComputePool.current
            if batches >= pool.threadCount {
                pool.parallelFor(batches) { range in
                    for i in range {
                        BLAS.gemm(precision: precision, transposeA: left.transposed, transposeB: right.transposed, m: m, n: n, k: k,
                                  a: pa + i * left.batchStride, lda: left.leadingDimension,
                                  b: pb + i * right.batchStride, ldb: right.leadingDimension,
                                  c: pc + i * m * n, ldc: n, pool: nil)
                    }
                }
            } else {
                for i in 0..<batches {
                    BLAS.gemm(precision: precision, transposeA: left.transposed, transposeB: right.transposed, m: m, n: n, k: k,
                              a: pa + i * left.batchStride, lda: left.leadingDimension,
                              b: pb + i * right.batchStride, ldb: right.leadingDimension,
                              c: pc + i * m * n, ldc: n)
                }
            }
        }
        return Tensor.record(result, operation: "matmul", inputs: [a, b]) { gradient in
            ComputePrecision.with(precision) { Tensor.matmulGradients(a, b, gradient, k: k, n: n) }
        }
    }

    /// The gradients of a·b for those of a and b that require them (at the thread's precision).
    private static func matmulGradients(_ a: Tensor, _ b: Tensor, _ gradient: Tensor, k: Int, n: Int) -> [Tensor?] {
        let aValue = a.detached(), bValue = b.detached()
        var gradA: Tensor?, gradB: Tensor?
        if a.requiresGrad { gradA = gradient.matmul(bValue.transposed()) }
        if b.requiresGrad {
            if b.rank == 2 {
                let aFlat = aValue.contiguous().reshaped([-1, k])
                gradB = aFlat.transposed().matmul(gradient.contiguous().reshaped([-1, n]))
            } else {
                gradB = aValue.transposed().matmul(gradient)
            }
        }
        return [gradA, gradB]
    }

    /// The fused linear layer y = x·W + b with W stored [in, out] (GPT-2's Conv1D layout); x is [..., in].
    public static func linear(_ x: Tensor, weight: Tensor, bias: Tensor?) -> Tensor {
        if let placed = PlacementDeduction.dispatch(.linear(x: x, weight: weight, bias: bias)) { return placed }
        let inFeatures = weight.shape[0], outFeatures = weight.shape[1]
        precondition(weight.rank == 2 && x.shape.last == inFeatures, "linear: input \(x.shape) does not match weight \(weight.shape) ([in, out])")
        if let bias { precondition(bias.shape == [outFeatures], "linear: bias \(bias.shape) does not match weight \(weight.shape)") }
        let input = x.contiguous()
        let rows = input.count / inFeatures
        let result = Tensor(uninitializedShape: Array(x.shape.dropLast()) + [outFeatures])
        let out = result.floatPointer
        let w = MatrixOperand(weight)
        let precision = ComputePrecision.current
        if let bias {
            let contiguousBias = bias.contiguous()
            defer { withExtendedLifetime(contiguousBias) {} }
            let b = contiguousBias.floatPointer
            ComputePool.current.parallelFor(rows, minimumChunk: 64) { range in
                for r in range { (out + r * outFeatures).update(from: b, count: outFeatures) }
            }
        }
        BLAS.gemm(precision: precision, transposeA: false, transposeB: w.transposed, m: rows, n: outFeatures, k: inFeatures,
                   a: input.floatPointer, lda: inFeatures, b: w.tensor.floatPointer, ldb: w.leadingDimension,
                   beta: bias == nil ? 0 : 1, c: out, ldc: outFeatures)
        let inputs = bias.map { [x, weight, $0] } ?? [x, weight]
        return record(result, operation: "linear", inputs: inputs) { gradient in
            let g = gradient.contiguous()
            let gradFlat = g.floatPointer
            var grads: [Tensor?] = []
            if x.requiresGrad {
                let dx = Tensor(uninitializedShape: x.shape)
                BLAS.gemm(precision: precision, transposeA: false, transposeB: !w.transposed, m: rows, n: inFeatures, k: outFeatures,
                           a: gradFlat, lda: outFeatures, b: w.tensor.floatPointer, ldb: w.leadingDimension,
                           c: dx.floatPointer, ldc: inFeatures)
                grads.append(dx)
            } else { grads.append(nil) }
            if weight.requiresGrad {
                let dw = Tensor(uninitializedShape: [inFeatures, outFeatures])
                BLAS.gemm(precision: precision, transposeA: true, transposeB: false, m: inFeatures, n: outFeatures, k: rows,
                           a: input.floatPointer, lda: inFeatures, b: gradFlat, ldb: outFeatures,
                           c: dw.floatPointer, ldc: outFeatures)
                grads.append(dw)
            } else { grads.append(nil) }
            if let bias {
                grads.append(bias.requiresGrad ? g.reshaped([rows, outFeatures]).sum(axes: [0]) : nil)
            }
            return grads
        }
    }
}
