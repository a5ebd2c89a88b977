/// Causal multi-head self-attention as one fused operation with its own backward.
///
/// Q, K and V are read in place from the fused QKV projection ([B, T, 3C], GPT-2's c_attn output) through
/// strided GEMMs, so no head is ever copied out. Work is split over (batch, head) pairs on the rank's pool,
/// each pair running single-threaded GEMMs at the thread's ``ComputePrecision``. At bf16 every GEMM operand
/// (Q, K, V, the probabilities, dY and dS) is rounded to bf16 once per call and multiplied with fp32
/// accumulation: rounding per GEMM would redo it for every causal block, and the per-head GEMMs are small.
///
/// Only the causal lower half is computed: rows are taken in blocks of `rowBlock`, and block [r0, r1) of the
/// scores needs keys 0..<r1 only, so the GEMMs skip every block above the diagonal (for T = 256 and blocks of
/// 64, 62.5 % of the full T² products; the rest of the upper half is zero-filled, never multiplied).
///
/// The attention probabilities ([B, heads, T, T], the largest activation of a layer) are kept for backward,
/// or — with `recompute` (selective activation recompute, Megatron's "attention core") — computed again in
/// backward from the saved QKV by the same code, so the gradients are bit-identical either way; dropout
/// masks are a pure function of their key and position, so they replay exactly too.
extension Tensor {
    /// softmax(Q·Kᵀ/√d + causal mask)·V per head, heads concatenated: qkv [B, T, 3C] → [B, T, C].
    /// With `dropout` probability p > 0, attention probabilities are dropped with masks derived from `key`.
    /// `recompute` frees the probabilities after forward and recomputes them in backward; `rowBlock` is the
    /// causal blocking (a parameter so tests can exercise several blocks on short sequences).
    ///
    /// `qkv` may hold only some heads of a wider attention (tensor parallelism splits it by head): its heads are
    /// heads `headOffset ..< headOffset + heads` of `totalHeads`, which places their dropout masks where the whole
    /// attention would draw them.
    public static func causalSelfAttention(qkv: Tensor, heads: Int, dropout probability: Float = 0, key: DropoutKey? = nil,
                                           recompute: Bool = false, rowBlock: Int = 64, headOffset: Int = 0, totalHeads: Int? = nil) -> Tensor {
        if totalHeads == nil, let placed = PlacementDeduction.dispatch(.attention(qkv: qkv, heads: heads, probability: probability, key: key, recompute: recompute)) { return placed }
        precondition(qkv.rank == 3 && qkv.shape[2] % 3 == 0, "causalSelfAttention expects qkv of shape [batch, time, 3·width], got \(qkv.shape)")
        let width = qkv.shape[2] / 3
        precondition(heads > 0 && width % heads == 0, "width \(width) is not divisible by \(heads) heads")
        precondition(probability == 0 || key != nil, "attention dropout needs a DropoutKey")
        precondition(rowBlock > 0, "rowBlock must be positive, got \(rowBlock)")
        let core = AttentionCore(qkv: qkv, heads: heads, probability: probability, key: key,
                                 precision: ComputePrecision.current, rowBlock: rowBlock, headOffset: headOffset, totalHeads: totalHeads ?? heads)
        let result = Tensor(uninitializedShape: [core.batch, core.time, width])
        let probabilities = core.forward(into: result)
        // Under recompute the closure must not hold the probabilities: they are freed here.
        let kept: Tensor? = recompute ? nil : probabilities
        return record(result, operation: "causalSelfAttention", inputs: [qkv]) { gradient in
            [core.backward(gradient, probabilities: kept ?? core.forward(into: nil))]
        }
    }
}

/// One call's attention: its shapes, saved input and settings, with the forward (which can run again for
/// recompute) and the backward.
private struct AttentionCore {
    let input: Tensor
    let batch: Int, time: Int, width: Int, heads: Int, headSize: Int
    let probability: Float
    let key: DropoutKey?
    let precision: DType
    let rowBlock: Int
    let scale: Float
    /// Where these heads sit among all of the attention's heads (for the dropout masks' positions).
    let headOffset: Int, totalHeads: Int

    /// Keeps qkv (contiguous), or at bf16 only its rounded copy: nothing reads the unrounded values.
    init(qkv: Tensor, heads: Int, probability: Float, key: DropoutKey?, precision: DType, rowBlock: Int, headOffset: Int, totalHeads: Int) {
        self.headOffset = headOffset
        self.totalHeads = totalHeads
        input = precision == .bfloat16 ? Self.roundedToBF16(qkv) : qkv.contiguous()
        batch = qkv.shape[0]; time = qkv.shape[1]; width = qkv.shape[2] / 3
        self.heads = heads
        headSize = width / heads
        self.probability = probability
        self.key = key
        self.precision = precision
        self.rowBlock = rowBlock
        scale = 1 / Float(headSize).squareRoot()
    }

    private var rowStride: Int { 3 * width }

    /// The causal row blocks: [r0, r1) pairs covering 0..<time.
    private var blocks: [(start: Int, end: Int)] {
        stride(from: 0, to: time, by: rowBlock).map { ($0, Swift.min($0 + rowBlock, time)) }
    }

    /// One single-threaded GEMM; its operands are already rounded at bf16.
    private func product(_ transposeA: Bool, _ transposeB: Bool, _ m: Int, _ n: Int, _ k: Int, alpha: Float = 1,
                         _ a: UnsafePointer<Float>, _ lda: Int, _ b: UnsafePointer<Float>, _ ldb: Int,
                         _ c: UnsafeMutablePointer<Float>, _ ldc: Int) {
        BLAS.sgemmSerial(transposeA: transposeA, transposeB: transposeB, m: m, n: n, k: k, alpha: alpha,
                         a: a, lda: lda, b: b, ldb: ldb, c: c, ldc: ldc)
    }

    private var roundsOperands: Bool { precision == .bfloat16 }

    /// A contiguous copy of `tensor` with every element rounded to the nearest bf16 (kept as fp32).
    static func roundedToBF16(_ tensor: Tensor) -> Tensor {
        let source = tensor.contiguous()
        let result = Tensor(uninitializedShape: source.shape)
        BFloat16.roundToFloat(source.floatPointer, to: result.floatPointer, count: source.count)
        return result
    }

    /// At bf16, rounds `count` values in place (a per-pair GEMM operand); otherwise nothing.
    private func roundInPlace(_ values: UnsafeMutablePointer<Float>, count: Int) {
        guard roundsOperands else { return }
        BFloat16.roundToFloat(values, to: values, count: count, pool: nil)
    }

    /// Writes the (dropped-out) probabilities of row `i` of one head into `target` (zero above the diagonal).
    private func dropped(_ p: UnsafePointer<Float>, into target: UnsafeMutablePointer<Float>, pair: Int, alsoScaling gradient: UnsafeMutablePointer<Float>? = nil) {
        guard let key else { return }
        let generator = key.generator
        let b = pair / heads, h = pair % heads
        let perSequence = totalHeads * time * time
        let keepScale = 1 / (1 - probability)
        for i in 0..<time {
            for j in 0...i {
                let element = (headOffset + h) * time * time + i * time + j
                let factor: Float = key.keeps(sequence: b, element: element, elementsPerSequence: perSequence, probability: probability, generator: generator) ? keepScale : 0
                target[i * time + j] = p[i * time + j] * factor
                gradient?[i * time + j] *= factor
            }
            (target + i * time + i + 1).update(repeating: 0, count: time - i - 1)
        }
    }

    /// Computes the probabilities [B, heads, T, T] and, when `output` is given, the attention output into it.
    /// Returns the probabilities (before dropout).
    @discardableResult
    func forward(into output: Tensor?) -> Tensor {
        let probabilities = Tensor(uninitializedShape: [batch, heads, time, time])
        let qp = input.floatPointer, pp = probabilities.floatPointer
        let yp = output?.floatPointer
        let rowStride = rowStride, blocks = blocks
        ComputePool.current.parallelFor(batch * heads) { range in
            let scratch = (probability > 0 || roundsOperands) && yp != nil ? UnsafeMutablePointer<Float>.allocate(capacity: time * time) : nil
            defer { scratch?.deallocate() }
            for pair in range {
                let b = pair / heads, h = pair % heads
                let q = qp + b * time * rowStride + h * headSize
                let k = q + width, v = q + 2 * width
                let p = pp + pair * time * time
                // Scores of row block [r0, r1) need keys 0..<r1 only.
                for (r0, r1) in blocks {
                    product(false, true, r1 - r0, r1, headSize, alpha: scale, q + r0 * rowStride, rowStride, k, rowStride, p + r0 * time, time)
                }
                for i in 0..<time {
                    let row = p + i * time
                    Tensor.softmaxRow(row, row, i + 1)
                    (row + i + 1).update(repeating: 0, count: time - i - 1)
                }
                guard let yp else { continue }
                var weights = UnsafePointer(p)
                if let scratch {
                    // The probabilities stay exact for backward; the GEMM gets the dropped and/or rounded copy.
                    if probability > 0 {
                        dropped(p, into: scratch, pair: pair)
                        roundInPlace(scratch, count: time * time)
                    } else {
                        BFloat16.roundToFloat(p, to: scratch, count: time * time, pool: nil)
                    }
                    weights = UnsafePointer(scratch)
                }
                let y = yp + b * time * width + h * headSize
                for (r0, r1) in blocks {
                    product(false, false, r1 - r0, headSize, r1, weights + r0 * time, time, v, rowStride, y + r0 * width, width)
                }
            }
        }
        return probabilities
    }

    /// The gradient of qkv given the output's gradient and the forward's probabilities.
    func backward(_ gradient: Tensor, probabilities: Tensor) -> Tensor {
        let g = roundsOperands ? Self.roundedToBF16(gradient) : gradient.contiguous()
        let qp = input.floatPointer, pp = probabilities.floatPointer
        let gp = g.floatPointer
        let dqkv = Tensor(uninitializedShape: input.shape)
        let dp = dqkv.floatPointer
        let rowStride = rowStride, blocks = blocks, scale = scale
        ComputePool.current.parallelFor(batch * heads) { range in
            let dProbabilities = UnsafeMutablePointer<Float>.allocate(capacity: time * time)
            let droppedWeights = probability > 0 || roundsOperands ? UnsafeMutablePointer<Float>.allocate(capacity: time * time) : nil
            defer { dProbabilities.deallocate(); droppedWeights?.deallocate() }
            for pair in range {
                let b = pair / heads, h = pair % heads
                let q = qp + b * time * rowStride + h * headSize
                let k = q + width, v = q + 2 * width
                let dq = dp + b * time * rowStride + h * headSize
                let dk = dq + width, dv = dq + 2 * width
                let p = pp + pair * time * time
                let dy = gp + b * time * width + h * headSize
                // dP = dY·Vᵀ, lower blocks only.
                for (r0, r1) in blocks {
                    product(false, true, r1 - r0, r1, headSize, dy + r0 * width, width, v, rowStride, dProbabilities + r0 * time, time)
                }
                var weights = UnsafePointer(p)
                if let droppedWeights {
                    if probability > 0 {
                        dropped(p, into: droppedWeights, pair: pair, alsoScaling: dProbabilities)
                        roundInPlace(droppedWeights, count: time * time)
                    } else {
                        BFloat16.roundToFloat(p, to: droppedWeights, count: time * time, pool: nil)
                    }
                    weights = UnsafePointer(droppedWeights)
                }
                // dV = Pᵀ·dY: keys [c0, c1) are attended by queries c0..<T only.
                for (c0, c1) in blocks {
                    product(true, false, c1 - c0, headSize, time - c0, weights + c0 * time + c0, time, dy + c0 * width, width, dv + c0 * rowStride, rowStride)
                }
                // dS = P ⊙ (dP − rowsum(dP ⊙ P)) · scale, causal part only; zero above the diagonal.
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
                roundInPlace(dProbabilities, count: time * time)
                // dQ = dS·K (row blocks need keys 0..<r1), dK = dSᵀ·Q (key blocks need queries c0..<T).
                for (r0, r1) in blocks {
                    product(false, false, r1 - r0, headSize, r1, dProbabilities + r0 * time, time, k, rowStride, dq + r0 * rowStride, rowStride)
                }
                for (c0, c1) in blocks {
                    product(true, false, c1 - c0, headSize, time - c0, dProbabilities + c0 * time + c0, time, q + c0 * rowStride, rowStride, dk + c0 * rowStride, rowStride)
                }
            }
        }
        return dqkv
    }
}
