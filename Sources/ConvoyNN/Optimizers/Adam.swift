import ConvoyTensor

/// Adam (Kingma & Ba) with L2 weight decay added to the gradient, or AdamW (Loshchilov & Hutter) with
/// decoupled weight decay; the update follows PyTorch's `torch.optim.Adam`/`AdamW` formulas exactly.
///
/// The per-tensor form: parameters stay where they are and each has its own moment tensors; the update is
/// ``AdamKernel``, the kernel ``FusedAdam`` runs over flat buffers, so the two agree bit for bit.
public final class Adam: Optimizer {
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
    private var moments: [ObjectIdentifier: (first: Tensor, second: Tensor)] = [:]

    public init(_ groups: [ParameterGroup], learningRate: Float, beta1: Float = 0.9, beta2: Float = 0.999, epsilon: Float = 1e-8, weightDecay: Float = 0, decoupledWeightDecay: Bool = false) {
        self.groups = groups
        self.learningRate = learningRate
        self.beta1 = beta1
        self.beta2 = beta2
        self.epsilon = epsilon
        self.weightDecay = weightDecay
        self.decoupledWeightDecay = decoupledWeightDecay
    }

    public convenience init(_ parameters: [Parameter], learningRate: Float, beta1: Float = 0.9, beta2: Float = 0.999, epsilon: Float = 1e-8, weightDecay: Float = 0, decoupledWeightDecay: Bool = false) {
        self.init([ParameterGroup(parameters)], learningRate: learningRate, beta1: beta1, beta2: beta2, epsilon: epsilon, weightDecay: weightDecay, decoupledWeightDecay: decoupledWeightDecay)
    }

    /// AdamW with PyTorch's default weight decay of 0.01.
    public static func adamW(_ groups: [ParameterGroup], learningRate: Float, beta1: Float = 0.9, beta2: Float = 0.999, epsilon: Float = 1e-8, weightDecay: Float = 0.01) -> Adam {
        Adam(groups, learningRate: learningRate, beta1: beta1, beta2: beta2, epsilon: epsilon, weightDecay: weightDecay, decoupledWeightDecay: true)
    }

    /// Runs ``AdamKernel`` (the arithmetic ``FusedAdam`` runs too) over one unmerged segment per parameter that
    /// has a gradient, group by group; each parameter's moments are tensors of their own, created at its first
    /// gradient.
    public func step() {
        stepCount += 1
        for group in groups {
            var plan = FlatSegmentPlan()
            for parameter in group.parameters {
                guard let grad = parameter.grad else { continue }
                let id = ObjectIdentifier(parameter)
                let state = moments[id] ?? TensorAllocator.withCategory(.optimizerState) { (Tensor.zeros(parameter.shape), Tensor.zeros(parameter.shape)) }
                moments[id] = state
                plan.add(FlatSegment(parameter: parameter.contiguousFloats, gradient: plan.pointer(to: grad), firstState: state.first.floatPointer,
                                     secondState: state.second.floatPointer, count: parameter.count, fresh: false), merging: false)
            }
            AdamKernel(learningRate: learningRate, beta1: beta1, beta2: beta2, epsilon: epsilon, weightDecay: group.weightDecay ?? weightDecay,
                       decoupledWeightDecay: decoupledWeightDecay, step: stepCount).run(plan)
        }
    }

    public func stateViews() -> OptimizerState {
        var state = OptimizerState(scalars: ["step": Double(stepCount)])
        for (index, parameter) in parameters.enumerated() {
            guard let moment = moments[ObjectIdentifier(parameter)] else { continue }
            let name = stateName(parameter, index: index)
            state.tensors[name + ".exp_avg"] = moment.first
            state.tensors[name + ".exp_avg_sq"] = moment.second
        }
        return state
    }

    public func load(_ state: OptimizerState) throws {
        guard let step = state.scalars["step"], step >= 0, step == step.rounded() else {
            throw ConvoyError.incompatible("Adam state has no valid 'step' counter")
        }
        var restored: [ObjectIdentifier: (Tensor, Tensor)] = [:]
        for (index, parameter) in parameters.enumerated() {
            let name = stateName(parameter, index: index)
            if state.tensors[name + ".exp_avg"] != nil || step > 0 {
                restored[ObjectIdentifier(parameter)] = (
                    try savedTensor(state, name + ".exp_avg", shape: parameter.shape),
                    try savedTensor(state, name + ".exp_avg_sq", shape: parameter.shape))
            }
        }
        moments = restored
        stepCount = Int(step)
    }
}

extension Double {
    /// self^exponent for a non-negative integer exponent.
    func power(_ exponent: Int) -> Double {
        var result = 1.0, base = self, e = exponent
        while e > 0 {
            if e & 1 == 1 { result *= base }
            base *= base
            e >>= 1
        }
        return result
    }
}
