import ConvoyTensor

/// The Adam / AdamW update (PyTorch's `torch.optim.Adam`/`AdamW` formulas), written once: ``Adam`` runs it over
/// one segment per parameter, ``FusedAdam`` over the merged segments of its flat buffers. Both therefore give
/// bit-identical results.
///
/// Per element, in this order: AdamW `p ·= 1 − lr·decay`, Adam `g += decay·p`; `m = β1·m + (1 − β1)·g`;
/// `v = β2·v + (1 − β2)·g²`; `p −= (lr / (1 − β1^t)) · m / (√v / √(1 − β2^t) + ε)`. The SIMD lanes do the same
/// operations as the scalar tail (no fused multiply-add).
struct AdamKernel {
    var learningRate: Float
    var beta1: Float
    var beta2: Float
    var epsilon: Float
    var weightDecay: Float
    var decoupledWeightDecay: Bool
    /// The step being taken (1 for the first), for bias correction.
    var step: Int

    /// Runs one update over `plan`, whose segments' first and second state buffers are the first and second
    /// moments.
    func run(_ plan: FlatSegmentPlan) {
        typealias Vector = VectorMath.Vector
        let lr = learningRate, b1 = beta1, b2 = beta2, eps = epsilon, decay = weightDecay
        let correction1 = 1 - Float(Double(b1).power(step))
        let correction2 = 1 - Float(Double(b2).power(step))
        let stepSize = lr / correction1
        let inverseRootCorrection2 = 1 / correction2.squareRoot()
        let keep1 = 1 - b1, keep2 = 1 - b2
        let shrink = 1 - lr * decay
        let decoupled = decoupledWeightDecay
        let vb1 = Vector(repeating: b1), vb2 = Vector(repeating: b2), vkeep1 = Vector(repeating: keep1), vkeep2 = Vector(repeating: keep2)
        let veps = Vector(repeating: eps), vstep = Vector(repeating: stepSize), vroot = Vector(repeating: inverseRootCorrection2)
        let vdecay = Vector(repeating: decay), vshrink = Vector(repeating: shrink)
        plan.run { p, g, firstMoment, secondMoment, count, _ in
            let m = firstMoment!, v = secondMoment!
            var i = 0
            while i + 8 <= count {
                var pv = VectorMath.load(p + i), gv = VectorMath.load(g + i)
                if decoupled { pv *= vshrink } else { gv += vdecay * pv }
                let mv = vb1 * VectorMath.load(m + i) + vkeep1 * gv
                let sv = vb2 * VectorMath.load(v + i) + vkeep2 * gv * gv
                VectorMath.store(mv, m + i)
                VectorMath.store(sv, v + i)
                let denominator = sv.squareRoot() * vroot + veps
                VectorMath.store(pv - vstep * mv / denominator, p + i)
                i += 8
            }
            while i < count {
                var gi = g[i]
                if decoupled { p[i] *= shrink } else { gi += decay * p[i] }
                m[i] = b1 * m[i] + keep1 * gi
                v[i] = b2 * v[i] + keep2 * gi * gi
                let denominator = v[i].squareRoot() * inverseRootCorrection2 + eps
                p[i] -= stepSize * m[i] / denominator
                i += 1
            }
        }
    }
}
