import ConvoyTensor

/// Stochastic gradient descent with optional momentum (heavy-ball or Nesterov) and L2 weight decay,
/// following PyTorch's `torch.optim.SGD` update exactly.
///
/// The per-tensor form: parameters stay where they are and each has its own momentum tensor; the update is
/// ``SGDKernel``, the kernel ``FusedSGD`` runs over flat buffers, so the two agree bit for bit.
public final class SGD: Optimizer {
    public var learningRate: Float
    public let momentum: Float
    public let dampening: Float
    public let nesterov: Bool
    public let weightDecay: Float
    public let groups: [ParameterGroup]
    private var momentumBuffers: [ObjectIdentifier: Tensor] = [:]

    public init(_ groups: [ParameterGroup], learningRate: Float, momentum: Float = 0, dampening: Float = 0, nesterov: Bool = false, weightDecay: Float = 0) {
        precondition(!nesterov || (momentum > 0 && dampening == 0), "Nesterov momentum needs momentum > 0 and dampening 0")
        self.groups = groups
        self.learningRate = learningRate
        self.momentum = momentum
        self.dampening = dampening
        self.nesterov = nesterov
        self.weightDecay = weightDecay
    }

    public convenience init(_ parameters: [Parameter], learningRate: Float, momentum: Float = 0, dampening: Float = 0, nesterov: Bool = false, weightDecay: Float = 0) {
        self.init([ParameterGroup(parameters)], learningRate: learningRate, momentum: momentum, dampening: dampening, nesterov: nesterov, weightDecay: weightDecay)
    }

    /// Runs ``SGDKernel`` (the arithmetic ``FusedSGD`` runs too) over one unmerged segment per parameter that
    /// has a gradient, group by group; each parameter's momentum buffer is a tensor of its own, started at its
    /// first gradient.
    public func step() {
        for group in groups {
            var plan = FlatSegmentPlan()
            for parameter in group.parameters {
                guard let grad = parameter.grad else { continue }
                var buffer: Tensor?
                var isFirst = false
                if momentum != 0 {
                    let id = ObjectIdentifier(parameter)
                    isFirst = momentumBuffers[id] == nil
                    buffer = momentumBuffers[id] ?? TensorAllocator.withCategory(.optimizerState) { Tensor.zeros(parameter.shape) }
                    momentumBuffers[id] = buffer
                }
                plan.add(FlatSegment(parameter: parameter.contiguousFloats, gradient: plan.pointer(to: grad), firstState: buffer?.floatPointer,
                                     secondState: nil, count: parameter.count, fresh: isFirst), merging: false)
            }
            SGDKernel(learningRate: learningRate, momentum: momentum, dampening: dampening, nesterov: nesterov,
                      weightDecay: group.weightDecay ?? weightDecay).run(plan)
        }
    }

    public func stateViews() -> OptimizerState {
        var state = OptimizerState()
        for (index, parameter) in parameters.enumerated() {
            if let buffer = momentumBuffers[ObjectIdentifier(parameter)] {
                state.tensors[stateName(parameter, index: index) + ".momentum_buffer"] = buffer
            }
        }
        return state
    }

    public func load(_ state: OptimizerState) throws {
        var restored: [ObjectIdentifier: Tensor] = [:]
        for (index, parameter) in parameters.enumerated() {
            let key = stateName(parameter, index: index) + ".momentum_buffer"
            if state.tensors[key] != nil {
                restored[ObjectIdentifier(parameter)] = try savedTensor(state, key, shape: parameter.shape)
            }
        }
        momentumBuffers = restored
    }
}
