import ConvoyTensor

/// ``SGD`` over flat buffers: the same hyper-parameters and bit-identical results, one kernel per fused group.
///
/// Parameter groups whose effective hyper-parameters agree (for SGD, the weight decay; the learning rate,
/// momentum, dampening and Nesterov flag are the optimizer's) are fused: their parameters are packed into one
/// ``FlatParameterBuffer`` (each parameter rebound to its slice) with a flat momentum buffer of the same layout,
/// and ``step()`` runs ``SGDKernel`` — the kernel ``SGD`` runs per tensor — once over the whole group. Groups
/// with other hyper-parameters get fused groups of their own. With `placement`
/// ``FlatParameterBuffer/Placement/inPlace`` the parameters are not moved (ZeRO's shard slices stay in its
/// buffers) and the loop runs over their adjacent runs; only the momentum is a flat buffer.
///
/// A parameter whose `grad` is nil at ``step()`` is skipped as ``SGD`` skips it: its segment of the flat
/// buffers is left out of the kernel's pass (the group runs over the maximal contiguous segments of
/// parameters that have gradients), so its value is untouched and its momentum buffer is not started or
/// advanced. ``zeroGradients()`` zero-fills instead of dropping, so after it every parameter takes part in the
/// next step (PyTorch's `zero_grad(set_to_none=False)`); set a `grad` to nil to exclude a parameter.
///
/// ``state()`` and ``load(_:)`` use ``SGD``'s keys (`<name>.momentum_buffer`), so checkpoints move freely
/// between the two.
public final class FusedSGD: Optimizer {
    public var learningRate: Float
    public let momentum: Float
    public let dampening: Float
    public let nesterov: Bool
    public let weightDecay: Float
    public let groups: [ParameterGroup]
    /// One flat buffer per fused group, in order of first appearance in ``groups``.
    public let flatBuffers: [FlatParameterBuffer]
    /// The weight decay each fused group applies.
    public let fusedWeightDecays: [Float]
    /// Number of fused groups (kernel launches per step).
    public var fusedGroupCount: Int { flatBuffers.count }
    /// For each fused group, the number of contiguous segments the last ``step()`` ran its kernel over (1 when
    /// every parameter had a gradient in the flat gradient buffer; 0 when none had a gradient).
    public private(set) var lastStepSegmentCounts: [Int]

    /// Each fused group's flat momentum buffer (allocated when momentum is on, or a loaded state has one).
    private var momentumBuffers: [Tensor?]
    /// Whether each parameter's momentum buffer has been started (``SGD`` starts it with the first update).
    private var hasMomentum: [[Bool]]
    /// Each fused group's parameters' positions in ``parameters`` (their state names).
    private let stateIndices: [[Int]]

    public init(_ groups: [ParameterGroup], learningRate: Float, momentum: Float = 0, dampening: Float = 0, nesterov: Bool = false, weightDecay: Float = 0,
                gradientLayout: FlatParameterBuffer.GradientLayout = .flat, placement: FlatParameterBuffer.Placement = .packed) throws {
        precondition(!nesterov || (momentum > 0 && dampening == 0), "Nesterov momentum needs momentum > 0 and dampening 0")
        self.groups = groups
        self.learningRate = learningRate
        self.momentum = momentum
        self.dampening = dampening
        self.nesterov = nesterov
        self.weightDecay = weightDecay
        let fused = try FusedGroups(groups, weightDecay: weightDecay, gradientLayout: gradientLayout, placement: placement)
        flatBuffers = fused.buffers
        fusedWeightDecays = fused.weightDecays
        stateIndices = fused.stateIndices
        let counts = flatBuffers.map(\.totalCount)
        momentumBuffers = try TensorAllocator.withCategory(.optimizerState) { try counts.map { momentum != 0 ? try Tensor.zeros([$0], for: "SGD's momentum buffers") : nil } }
        hasMomentum = flatBuffers.map { [Bool](repeating: false, count: $0.parameters.count) }
        lastStepSegmentCounts = [Int](repeating: 0, count: flatBuffers.count)
    }

    public convenience init(_ parameters: [Parameter], learningRate: Float, momentum: Float = 0, dampening: Float = 0, nesterov: Bool = false, weightDecay: Float = 0,
                            gradientLayout: FlatParameterBuffer.GradientLayout = .flat, placement: FlatParameterBuffer.Placement = .packed) throws {
        try self.init([ParameterGroup(parameters)], learningRate: learningRate, momentum: momentum, dampening: dampening, nesterov: nesterov,
                  weightDecay: weightDecay, gradientLayout: gradientLayout, placement: placement)
    }

    public func step() {
        for (groupIndex, flat) in flatBuffers.enumerated() {
            let started = hasMomentum[groupIndex]
            let (plan, covered) = flat.plan(firstState: momentumBuffers[groupIndex]) { momentum != 0 && !started[$0] }
            lastStepSegmentCounts[groupIndex] = plan.segments.count
            SGDKernel(learningRate: learningRate, momentum: momentum, dampening: dampening, nesterov: nesterov,
                      weightDecay: fusedWeightDecays[groupIndex]).run(plan)
            if momentum != 0 { for index in covered { hasMomentum[groupIndex][index] = true } }
        }
    }

    /// Zero-fills the gradients, keeping them views (see ``FlatParameterBuffer/zeroGradients()``).
    public func zeroGradients() {
        for flat in flatBuffers { flat.zeroGradients() }
    }

    public func stateViews() -> OptimizerState {
        var entries: [(index: Int, tensor: Tensor)] = []
        for (groupIndex, flat) in flatBuffers.enumerated() {
            guard let buffer = momentumBuffers[groupIndex] else { continue }
            for slot in flat.parameters.indices where hasMomentum[groupIndex][slot] {
                entries.append((stateIndices[groupIndex][slot], flat.slice(of: buffer, slot)))
            }
        }
        var state = OptimizerState()
        let all = parameters
        for entry in entries {
            state.tensors[stateName(all[entry.index], index: entry.index) + ".momentum_buffer"] = entry.tensor
        }
        return state
    }

    public func load(_ state: OptimizerState) throws {
        // Validate everything first: on error nothing changes.
        let all = parameters
        var restored: [[Tensor?]] = flatBuffers.map { [Tensor?](repeating: nil, count: $0.parameters.count) }
        let location = FusedGroups.locations(stateIndices)
        for (index, parameter) in all.enumerated() {
            let key = stateName(parameter, index: index) + ".momentum_buffer"
            if state.tensors[key] != nil, let (groupIndex, slot) = location[index] {
                restored[groupIndex][slot] = try savedTensor(state, key, shape: parameter.shape)
            }
        }
        for (groupIndex, flat) in flatBuffers.enumerated() {
            if momentumBuffers[groupIndex] == nil && restored[groupIndex].contains(where: { $0 != nil }) {
                momentumBuffers[groupIndex] = try TensorAllocator.withCategory(.optimizerState) { try Tensor.zeros([flat.totalCount], for: "SGD's momentum buffers") }
            }
            guard let buffer = momentumBuffers[groupIndex] else { continue }
            buffer.fill(0)
            for slot in flat.parameters.indices {
                if let tensor = restored[groupIndex][slot] {
                    (buffer.floatPointer + flat.offsets[slot]).update(from: tensor.floatPointer, count: flat.counts[slot])
                    withExtendedLifetime(tensor) {}
                }
                hasMomentum[groupIndex][slot] = restored[groupIndex][slot] != nil
            }
        }
    }
}
