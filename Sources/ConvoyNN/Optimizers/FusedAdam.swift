import ConvoyTensor

/// ``Adam`` (and AdamW) over flat buffers: the same hyper-parameters and bit-identical results, one kernel per
/// fused group.
///
/// Parameter groups whose effective hyper-parameters agree (for Adam, the weight decay; the learning rate,
/// betas, epsilon and decay mode are the optimizer's) are fused: their parameters are packed into one
/// ``FlatParameterBuffer`` (each parameter rebound to its slice) with flat first- and second-moment buffers of
/// the same layout, and ``step()`` runs ``AdamKernel`` — the kernel ``Adam`` runs per tensor — once over the
/// whole group. Groups with other hyper-parameters are fused apart.
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
                gradientLayout: FlatParameterBuffer.GradientLayout = .flat, placement: FlatParameterBuffer.Placement = .packed) throws {
        self.groups = groups
        self.learningRate = learningRate
        self.beta1 = beta1
        self.beta2 = beta2
        self.epsilon = epsilon
        self.weightDecay = weightDecay
        self.decoupledWeightDecay = decoupledWeightDecay
        let fused = try FusedGroups(groups, weightDecay: weightDecay, gradientLayout: gradientLayout, placement: placement)
        flatBuffers = fused.buffers
        fusedWeightDecays = fused.weightDecays
        stateIndices = fused.stateIndices
        let counts = flatBuffers.map(\.totalCount)
        firstMoments = try TensorAllocator.withCategory(.optimizerState) { try counts.map { try Tensor.zeros([$0], for: "Adam's first moments") } }
        secondMoments = try TensorAllocator.withCategory(.optimizerState) { try counts.map { try Tensor.zeros([$0], for: "Adam's second moments") } }
        hasMoments = flatBuffers.map { [Bool](repeating: false, count: $0.parameters.count) }
        lastStepSegmentCounts = [Int](repeating: 0, count: flatBuffers.count)
    }

    public convenience init(_ parameters: [Parameter], learningRate: Float, beta1: Float = 0.9, beta2: Float = 0.999, epsilon: Float = 1e-8, weightDecay: Float = 0, decoupledWeightDecay: Bool = false,
                            gradientLayout: FlatParameterBuffer.GradientLayout = .flat, placement: FlatParameterBuffer.Placement = .packed) throws {
        try self.init([ParameterGroup(parameters)], learningRate: learningRate, beta1: beta1, beta2: beta2, epsilon: epsilon, weightDecay: weightDecay,
                  decoupledWeightDecay: decoupledWeightDecay, gradientLayout: gradientLayout, placement: placement)
    }

    /// AdamW with PyTorch's default weight decay of 0.01.
    public static func adamW(_ groups: [ParameterGroup], learningRate: Float, beta1: Float = 0.9, beta2: Float = 0.999, epsilon: Float = 1e-8, weightDecay: Float = 0.01,
                             gradientLayout: FlatParameterBuffer.GradientLayout = .flat, placement: FlatParameterBuffer.Placement = .packed) throws -> FusedAdam {
        try FusedAdam(groups, learningRate: learningRate, beta1: beta1, beta2: beta2, epsilon: epsilon, weightDecay: weightDecay,
                  decoupledWeightDecay: true, gradientLayout: gradientLayout, placement: placement)
    }

    public func step() {
        stepCount += 1
        for (groupIndex, flat) in flatBuffers.enumerated() {
            let (plan, covered) = flat.plan(firstState: firstMoments[groupIndex], secondState: secondMoments[groupIndex]) { _ in false }
            lastStepSegmentCounts[groupIndex] = plan.segments.count
            AdamKernel(learningRate: learningRate, beta1: beta1, beta2: beta2, epsilon: epsilon, weightDecay: fusedWeightDecays[groupIndex],
                       decoupledWeightDecay: decoupledWeightDecay, step: stepCount).run(plan)
            for index in covered { hasMoments[groupIndex][index] = true }
        }
    }

    /// Zero-fills the gradients, keeping them views (see ``FlatParameterBuffer/zeroGradients()``).
    public func zeroGradients() {
        for flat in flatBuffers { flat.zeroGradients() }
    }

    public func stateViews() -> OptimizerState {
        var state = OptimizerState(scalars: ["step": Double(stepCount)])
        let all = parameters
        for (groupIndex, flat) in flatBuffers.enumerated() {
            for slot in flat.parameters.indices where hasMoments[groupIndex][slot] {
                let index = stateIndices[groupIndex][slot]
                let name = stateName(all[index], index: index)
                state.tensors[name + ".exp_avg"] = flat.slice(of: firstMoments[groupIndex], slot)
                state.tensors[name + ".exp_avg_sq"] = flat.slice(of: secondMoments[groupIndex], slot)
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
