import ConvoyTensor

/// ``Adam`` (and AdamW) over flat buffers: the same hyper-parameters and bit-identical results, one kernel per
/// fused group.
///
/// Parameter groups whose effective hyper-parameters agree (for Adam, the weight decay; the learning rate,
/// betas, epsilon and decay mode are the optimizer's) are fused: their parameters are packed into one
/// ``FlatParameterBuffer`` (each parameter rebound to its slice) with flat first- and second-moment buffers of
/// the same layout, and ``step()`` runs one parallel SIMD loop over the whole group, applying exactly
/// ``Adam``'s per-element arithmetic in the same order. Groups with other hyper-parameters are fused apart.
/// With `placement` ``FlatParameterBuffer/Placement/inPlace`` the parameters are not moved (ZeRO's shard slices
/// stay in its buffers) and the loop runs over their adjacent runs; only the moments are flat buffers.
///
/// A parameter whose `grad` is nil at ``step()`` is skipped as ``Adam`` skips it: its segment of the flat
/// buffers is left out of the kernel's pass, so its value is untouched and its moments stay as they were
/// (zero, and absent from ``state()``, until its first gradient). The step counter is the optimizer's, as in
/// ``Adam``. ``zeroGradients()`` zero-fills instead of dropping (see ``FusedSGD``).
///
/// ``state()`` and ``load(_:)`` use ``Adam``'s keys (`<name>.exp_avg`, `<name>.exp_avg_sq`, scalar `step`),
/// so checkpoints move freely between the two.
public final class FusedAdam: Optimizer {
    public var learningRate: Float
    public let beta1: Float
    public let beta2: Float
    public let epsilon: Float
    public let weightDecay: Float
    /// True for AdamW: decay applied to the weights directly, not through the gradient.
    public let decoupledWeightDecay: Bool
    public let groups: [ParameterGroup]
    /// Number of steps taken (bias correction).
    public private(set) var stepCount = 0
    /// One flat buffer per fused group, in order of first appearance in ``groups``.
    public let flatBuffers: [FlatParameterBuffer]
    /// The weight decay each fused group applies.
    public let fusedWeightDecays: [Float]
    /// Number of fused groups (kernel launches per step).
    public var fusedGroupCount: Int { flatBuffers.count }
    /// For each fused group, the number of contiguous segments the last ``step()`` ran its kernel over.
    public private(set) var lastStepSegmentCounts: [Int]

    /// Each fused group's flat first and second moments.
    private let firstMoments: [Tensor]
    private let secondMoments: [Tensor]
    /// Whether each parameter has moments (``Adam`` creates them at its first gradient).
    private var hasMoments: [[Bool]]
    /// Each fused group's parameters' positions in ``parameters`` (their state names).
    private let stateIndices: [[Int]]

    public init(_ groups: [ParameterGroup], learningRate: Float, beta1: Float = 0.9, beta2: Float = 0.999, epsilon: Float = 1e-8, weightDecay: Float = 0, decoupledWeightDecay: Bool = false,
                gradientLayout: FlatParameterBuffer.GradientLayout = .flat, placement: FlatParameterBuffer.Placement = .packed) {
        self.groups = groups
        self.learningRate = learningRate
        self.beta1 = beta1
        self.beta2 = beta2
        self.epsilon = epsilon
        self.weightDecay = weightDecay
        self.decoupledWeightDecay = decoupledWeightDecay
        let fused = FusedGroups(groups, weightDecay: weightDecay, gradientLayout: gradientLayout, placement: placement)
        flatBuffers = fused.buffers
        fusedWeightDecays = fused.weightDecays
        stateIndices = fused.stateIndices
        let counts = flatBuffers.map(\.totalCount)
        firstMoments = TensorAllocator.withCategory(.optimizerState) { counts.map { Tensor.zeros([$0]) } }
        secondMoments = TensorAllocator.withCategory(.optimizerState) { counts.map { Tensor.zeros([$0]) } }
        hasMoments = flatBuffers.map { [Bool](repeating: false, count: $0.parameters.count) }
        lastStepSegmentCounts = [Int](repeating: 0, count: flatBuffers.count)
    }

    public convenience init(_ parameters: [Parameter], learningRate: Float, beta1: Float = 0.9, beta2: Float = 0.999, epsilon: Float = 1e-8, weightDecay: Float = 0, decoupledWeightDecay: Bool = false,
                            gradientLayout: FlatParameterBuffer.GradientLayout = .flat, placement: FlatParameterBuffer.Placement = .packed) {
        self.init([ParameterGroup(parameters)], learningRate: learningRate, beta1: beta1, beta2: beta2, epsilon: epsilon, weightDecay: weightDecay,
                  decoupledWeightDecay: decoupledWeightDecay, gradientLayout: gradientLayout, placement: placement)
    }

    /// AdamW with PyTorch's default weight decay of 0.01.
    public static func adamW(_ groups: [ParameterGroup], learningRate: Float, beta1: Float = 0.9, beta2: Float = 0.999, epsilon: Float = 1e-8, weightDecay: Float = 0.01,
                             gradientLayout: FlatParameterBuffer.GradientLayout = .flat, placement: FlatParameterBuffer.Placement = .packed) -> FusedAdam {
        FusedAdam(groups, learningRate: learningRate, beta1: beta1, beta2: beta2, epsilon: epsilon, weightDecay: weightDecay,
                  decoupledWeightDecay: true, gradientLayout: gradientLayout, placement: placement)
    }

    public func step() {
        typealias Vector = VectorMath.Vector
        stepCount += 1
        // Exactly Adam.step's scalars.
        let lr = learningRate, b1 = beta1, b2 = beta2, eps = epsilon
        let correction1 = 1 - Float(Double(b1).power(stepCount))
        let correction2 = 1 - Float(Double(b2).power(stepCount))
        let stepSize = lr / correction1
        let inverseRootCorrection2 = 1 / correction2.squareRoot()
        let keep1 = 1 - b1, keep2 = 1 - b2
        let decoupled = decoupledWeightDecay
        let vb1 = Vector(repeating: b1), vb2 = Vector(repeating: b2), vkeep1 = Vector(repeating: keep1), vkeep2 = Vector(repeating: keep2)
        let veps = Vector(repeating: eps), vstep = Vector(repeating: stepSize), vroot = Vector(repeating: inverseRootCorrection2)
        for (groupIndex, flat) in flatBuffers.enumerated() {
            let decay = fusedWeightDecays[groupIndex]
            let shrink = 1 - lr * decay
            let vdecay = Vector(repeating: decay), vshrink = Vector(repeating: shrink)
            let plan = flat.plan { _ in false }
            lastStepSegmentCounts[groupIndex] = plan.segments.count
            let first = firstMoments[groupIndex].floatPointer, second = secondMoments[groupIndex].floatPointer
            plan.run { p, start, g, count, _ in
                let m = first + start, v = second + start
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
            for index in plan.covered { hasMoments[groupIndex][index] = true }
        }
    }

    /// Zero-fills the gradients, keeping them views (see ``FlatParameterBuffer/zeroGradients()``).
    public func zeroGradients() {
        for flat in flatBuffers { flat.zeroGradients() }
    }

    public func state() -> OptimizerState {
        var state = OptimizerState(scalars: ["step": Double(stepCount)])
        let all = parameters
        for (groupIndex, flat) in flatBuffers.enumerated() {
            for slot in flat.parameters.indices where hasMoments[groupIndex][slot] {
                let index = stateIndices[groupIndex][slot]
                let name = stateName(all[index], index: index)
                state.tensors[name + ".exp_avg"] = flat.slice(of: firstMoments[groupIndex], slot).copy()
                state.tensors[name + ".exp_avg_sq"] = flat.slice(of: secondMoments[groupIndex], slot).copy()
            }
        }
        return state
    }

    public func load(_ state: OptimizerState) throws {
        guard let step = state.scalars["step"], step >= 0, step == step.rounded() else {
            throw ConvoyError.incompatible("Adam state has no valid 'step' counter")
        }
        // Validate everything first: on error nothing changes.
        let all = parameters
        var restored: [[(Tensor, Tensor)?]] = flatBuffers.map { [(Tensor, Tensor)?](repeating: nil, count: $0.parameters.count) }
        let location = FusedGroups.locations(stateIndices)
        for (index, parameter) in all.enumerated() {
            let name = stateName(parameter, index: index)
            if state.tensors[name + ".exp_avg"] != nil || step > 0, let (groupIndex, slot) = location[index] {
                restored[groupIndex][slot] = (try savedTensor(state, name + ".exp_avg", shape: parameter.shape),
                                              try savedTensor(state, name + ".exp_avg_sq", shape: parameter.shape))
            }
        }
        for (groupIndex, flat) in flatBuffers.enumerated() {
            let first = firstMoments[groupIndex], second = secondMoments[groupIndex]
            first.fill(0)
            second.fill(0)
            for slot in flat.parameters.indices {
                if let (m, v) = restored[groupIndex][slot] {
                    (first.floatPointer + flat.offsets[slot]).update(from: m.floatPointer, count: flat.counts[slot])
                    (second.floatPointer + flat.offsets[slot]).update(from: v.floatPointer, count: flat.counts[slot])
                    withExtendedLifetime((m, v)) {}
                }
                hasMoments[groupIndex][slot] = restored[groupIndex][slot] != nil
            }
        }
        stepCount = Int(step)
    }
}
