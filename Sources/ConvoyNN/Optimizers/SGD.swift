import ConvoyTensor

/// Stochastic gradient descent with optional momentum (heavy-ball or Nesterov) and L2 weight decay,
/// following PyTorch's `torch.optim.SGD` update exactly.
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

    public func step() {
        let lr = learningRate
        for group in groups {
            let decay = group.weightDecay ?? weightDecay
            for parameter in group.parameters {
                guard let grad = parameter.grad else { continue }
                let contiguousGradient = grad.contiguous()
                defer { withExtendedLifetime(contiguousGradient) {} }
                let p = parameter.contiguousFloats, g = contiguousGradient.floatPointer
                let n = parameter.count
                if momentum == 0 {
                    for i in 0..<n { p[i] -= lr * (g[i] + decay * p[i]) }
                    continue
                }
                let id = ObjectIdentifier(parameter)
                let isFirst = momentumBuffers[id] == nil
                let buffer = momentumBuffers[id] ?? TensorAllocator.withCategory(.optimizerState) { Tensor.zeros(parameter.shape) }
                momentumBuffers[id] = buffer
                let b = buffer.floatPointer
                for i in 0..<n {
                    let d = g[i] + decay * p[i]
                    b[i] = isFirst ? d : momentum * b[i] + (1 - dampening) * d
                    let update = nesterov ? d + momentum * b[i] : b[i]
                    p[i] -= lr * update
                }
            }
        }
    }

    public func state() -> OptimizerState {
        var state = OptimizerState()
        for (index, parameter) in parameters.enumerated() {
            if let buffer = momentumBuffers[ObjectIdentifier(parameter)] {
                state.tensors[stateName(parameter, index: index) + ".momentum_buffer"] = buffer.copy()
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
