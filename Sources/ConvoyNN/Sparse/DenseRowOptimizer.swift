import ConvoyTensor

/// ``RowOptimizer`` over ordinary (dense) parameters updated where they live — on a worker whose dense
/// parameters are all-reduced rather than held by servers — with every element a row of width 1, so the
/// dense parameters follow the same rule, state and arithmetic as on a server.
public final class DenseRowOptimizer {
    public let parameters: [Parameter]
    public let rule: RowOptimizer
    /// Per parameter, [count, rule.stateCount(width: 1)] (nil for SGD).
    public private(set) var states: [Tensor?]

    public init(parameters: [Parameter], rule: RowOptimizer) {
        self.parameters = parameters
        self.rule = rule
        let width = rule.stateCount(width: 1)
        states = parameters.map { parameter in
            width == 0 ? nil : TensorAllocator.withCategory(.optimizerState) { Tensor.zeros([parameter.count, width]) }
        }
    }

    /// Updates every parameter that has a gradient.
    public func step(learningRate: Float) {
        let stateWidth = rule.stateCount(width: 1)
        var empty: Float = 0
        for (parameter, state) in zip(parameters, states) {
            guard let gradient = parameter.grad?.contiguous() else { continue }
            let values = parameter.contiguousFloats, gradients = gradient.floatPointer, statePointer = state?.floatPointer
            withExtendedLifetime(gradient) {
                withUnsafeMutablePointer(to: &empty) { scratch in
                    for i in 0..<parameter.count {
                        rule.update(row: values + i, gradient: gradients + i, scale: 1, state: statePointer.map { $0 + i * stateWidth } ?? scratch,
                                    width: 1, learningRate: learningRate)
                    }
                }
            }
        }
    }

    /// The state tensors by parameter name (for checkpoints).
    public func namedStates() -> [String: Tensor] {
        var result: [String: Tensor] = [:]
        for (index, (parameter, state)) in zip(parameters, states).enumerated() {
            if let state { result[(parameter.name ?? "param\(index)") + ".row_state"] = state }
        }
        return result
    }

    /// Restores ``namedStates()``; throws when one is missing or shaped differently.
    public func load(_ tensors: [String: Tensor], source: String) throws {
        for (index, (parameter, state)) in zip(parameters, states).enumerated() {
            guard let state else { continue }
            let key = (parameter.name ?? "param\(index)") + ".row_state"
            guard let saved = tensors[key], saved.shape == state.shape else {
                throw ConvoyError.incompatible("\(source) has no optimizer state '\(key)' of shape \(state.shape); it was saved with another optimizer or model")
            }
            state.floatPointer.update(from: saved.converted(to: .float32).contiguous().floatPointer, count: state.count)
        }
    }
}
