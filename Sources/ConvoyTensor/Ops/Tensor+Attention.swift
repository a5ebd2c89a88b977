/// Causal multi-head self-attention as one fused operation with its own backward.
///
/// Q, K and V are read in place from the fused QKV projection ([B, T, 3C], GPT-2's c_attn output) through
/// strided GEMMs, so no head is ever copied out. Work is split over (batch, head) pairs on the rank's pool,
/// each pair running single-threaded BLAS. The attention probabilities are kept for backward.
extension Tensor {
    /// softmax(Q·Kᵀ/√d + causal mask)·V per head, heads concatenated: qkv [B, T, 3C] → [B, T, C].
    /// With `dropout` probability p > 0, attention probabilities are dropped with masks derived from `key`.
    ///
    /// `qkv` may hold only some heads of a wider attention (tensor parallelism splits it by head): its heads are
    /// heads `headOffset ..< headOffset + heads` of `totalHeads`, which places their dropout masks where the whole
    /// attention would draw them.
    public static func causalSelfAttention(qkv: Tensor, heads: Int, dropout probability: Float = 0, key: DropoutKey? = nil,
                                           headOffset: Int = 0, totalHeads: Int? = nil) -> Tensor {
        if totalHeads == nil, let placed = PlacementDeduction.dispatch(.attention(qkv: qkv, heads: heads, probability: probability, key: key)) { return placed }
        precondition(qkv.rank == 3 && qkv.shape[2] % 3 == 0, "causalSelfAttention expects qkv of shape [batch, time, 3·width], got \(qkv.shape)")
        let batch = qkv.shape[0], time = qkv.shape[1], width = qkv.shape[2] / 3
        precondition(heads > 0 && width % heads == 0, "width \(width) is not divisible by \(heads) heads")
        precondition(probability == 0 || key != nil, "attention dropout needs a DropoutKey")
        let headSize = width / heads
        let scale = 1 / Float(headSize).squareRoot()
        let input = qkv.contiguous()
        let result = Tensor(uninitializedShape: [batch, time, width])
        let probabilities = Tensor(uninitializedShape: [batch, heads, time, time])
        let qp = input.floatPointer, yp = result.floatPointer, pp = probabilities.floatPointer
        let rowStride = 3 * width
        let pairs = batch * heads
        let keepScale = 1 / (1 - probability)
        let generator = key?.generator
        // Elements per sequence for the dropout counter: heads · time · time.
        let perSequence = (totalHeads ?? heads) * time * time

        ComputePool.current.parallelFor(pairs) { range in
            let scratch = probability > 0 ? UnsafeMutablePointer<Float>.allocate(capacity: time * time) : nil
            defer { scratch?.deallocate() }
            for pair in range {
                let b = pair / heads, h = pair % heads
                let q = qp + b * time * rowStride + h * headSize
                let k = q + width, v = q + 2 * width
                let p = pp + pair * time * time
                BLAS.sgemmSerial(transposeA: false, transposeB: true, m: time, n: time, k: headSize, alpha: scale,
                                 a: q, lda: rowStride, b: k, ldb: rowStride, c: p, ldc: time)
                for i in 0..<time {
                    let row = p + i * time
                    softmaxRow(row, row, i + 1)
                    (row + i + 1).update(repeating: 0, count: time - i - 1)
                }
                var weights = UnsafePointer(p)
                if let scratch, let key, let generator {
                    for i in 0..<time {
                        for j in 0..<time {
                            let element = (headOffset + h) * time * time + i * time + j
                            let keep = key.keeps(sequence: b, element: element, elementsPerSequence: perSequence, probability: probability, generator: generator)
                            scratch[i * time + j] = keep ? p[i * time + j] * keepScale : 0
                        }
                    }
                    weights = UnsafePointer(scratch)
                }
                BLAS.sgemmSerial(transposeA: false, transposeB: false, m: time, n: headSize, k: time,
                                 a: weights, lda: time, b: v, ldb: rowStride, c: yp + b * time * width + h * headSize, ldc: width)
            }
        }

        return record(result, operation: "causalSelfAttention", inputs: [qkv]) { gradient in
            // Pointers are re-derived from the tensors so the closure keeps the saved tensors alive.
            let qp = input.floatPointer, pp = probabilities.floatPointer
            let g = gradient.contiguous()
            let gp = g.floatPointer
            let dqkv = Tensor(uninitializedShape: qkv.shape)
            let dp = dqkv.floatPointer
            ComputePool.current.parallelFor(pairs) { range in
                let dProbabilities = UnsafeMutablePointer<Float>.allocate(capacity: time * time)
                let dropped = probability > 0 ? UnsafeMutablePointer<Float>.allocate(capacity: time * time) : nil
                defer { dProbabilities.deallocate(); dropped?.deallocate() }
                for pair in range {
                    let b = pair / heads, h = pair % heads
                    let q = qp + b * time * rowStride + h * headSize
                    let k = q + width, v = q + 2 * width
                    let dq = dp + b * time * rowStride + h * headSize
                    let dk = dq + width, dv = dq + 2 * width
                    let p = pp + pair * time * time
                    let dy = gp + b * time * width + h * headSize
                    // dP = dY·Vᵀ
                    BLAS.sgemmSerial(transposeA: false, transposeB: true, m: time, n: time, k: headSize,
                                     a: dy, lda: width, b: v, ldb: rowStride, c: dProbabilities, ldc: time)
                    var weights = UnsafePointer(p)
                    if let dropped, let key, let generator {
                        for i in 0..<time {
                            for j in 0..<time {
                                let element = (headOffset + h) * time * time + i * time + j
                                let factor: Float = key.keeps(sequence: b, element: element, elementsPerSequence: perSequence, probability: probability, generator: generator) ? keepScale : 0
                                dropped[i * time + j] = p[i * time + j] * factor
                                dProbabilities[i * time + j] *= factor
                            }
                        }
                        weights = UnsafePointer(dropped)
                    }
                    // dV = Pᵀ·dY
                    BLAS.sgemmSerial(transposeA: true, transposeB: false, m: time, n: headSize, k: time,
                                     a: weights, lda: time, b: dy, ldb: width, c: dv, ldc: rowStride)
                    // dS = P ⊙ (dP − rowsum(dP ⊙ P)) · scale, causal part only.
                    for i in 0..<time {
                        let pRow = p + i * time, dRow = dProbabilities + i * time
                        let n = i + 1
                        let dot = VectorMath.dot(pRow, dRow, n)
                        let d = VectorMath.Vector(repeating: dot), s = VectorMath.Vector(repeating: scale)
                        var j = 0
                        while j + 8 <= n {
                            VectorMath.store(VectorMath.load(pRow + j) * (VectorMath.load(dRow + j) - d) * s, dRow + j)
                            j += 8
                        }
                        while j < n { dRow[j] = pRow[j] * (dRow[j] - dot) * scale; j += 1 }
                        (dRow + n).update(repeating: 0, count: time - n)
                    }
                    // dQ = dS·K, dK = dSᵀ·Q
                    BLAS.sgemmSerial(transposeA: false, transposeB: false, m: time, n: headSize, k: time,
                                     a: dProbabilities, lda: time, b: k, ldb: rowStride, c: dq, ldc: rowStride)
                    BLAS.sgemmSerial(transposeA: true, transposeB: false, m: time, n: headSize, k: time,
                                     a: dProbabilities, lda: time, b: q, ldb: rowStride, c: dk, ldc: rowStride)
                }
            }
            return [dqkv]
        }
    }
}
