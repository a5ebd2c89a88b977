import ConvoyTensor

/// The SGD update (PyTorch's `torch.optim.SGD`: L2 weight decay through the gradient, optional heavy-ball or
/// Nesterov momentum with dampening), written once: ``SGD`` runs it over one segment per parameter,
/// ``FusedSGD`` over the merged segments of its flat buffers. Both therefore give bit-identical results.
///
/// Per element, in this order: `d = g + decay·p`; with momentum `b = fresh ? d : momentum·b + (1 − dampening)·d`
/// and `update = nesterov ? d + momentum·b : b`, else `update = d`; `p −= lr·update`. The SIMD lanes do the
/// same operations as the scalar tail (no fused multiply-add), so the split into vectors changes nothing.
struct SGDKernel {
    var learningRate: Float
    var momentum: Float
    var dampening: Float
    var nesterov: Bool
    var weightDecay: Float

    /// Runs one update over `plan`; with momentum each segment's first state buffer is its momentum buffer,
    /// started from `d` where the segment is `fresh`.
    func run(_ plan: FlatSegmentPlan) {
        typealias Vector = VectorMath.Vector
        let lr = learningRate, decay = weightDecay, momentum = self.momentum, nesterov = self.nesterov
        let keep = 1 - dampening
        let vlr = Vector(repeating: lr), vdecay = Vector(repeating: decay)
        if momentum == 0 {
            plan.run { p, g, _, _, count, _ in
                var i = 0
                while i + 8 <= count {
                    let pv = VectorMath.load(p + i)
                    VectorMath.store(pv - vlr * (VectorMath.load(g + i) + vdecay * pv), p + i)
                    i += 8
                }
                while i < count { p[i] -= lr * (g[i] + decay * p[i]); i += 1 }
            }
            return
        }
        let vmomentum = Vector(repeating: momentum), vkeep = Vector(repeating: keep)
        plan.run { p, g, momentumBuffer, _, count, isFirst in
            let b = momentumBuffer!
            var i = 0
            while i + 8 <= count {
                let pv = VectorMath.load(p + i)
                let d = VectorMath.load(g + i) + vdecay * pv
                let bv = isFirst ? d : vmomentum * VectorMath.load(b + i) + vkeep * d
                VectorMath.store(bv, b + i)
                let update = nesterov ? d + vmomentum * bv : bv
                VectorMath.store(pv - vlr * update, p + i)
                i += 8
            }
            while i < count {
                let d = g[i] + decay * p[i]
                b[i] = isFirst ? d : momentum * b[i] + keep * d
                let update = nesterov ? d + momentum * b[i] : b[i]
                p[i] -= lr * update
                i += 1
            }
        }
    }
}
