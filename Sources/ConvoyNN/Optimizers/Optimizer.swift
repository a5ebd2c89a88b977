import ConvoyTensor

/// Parameters that share hyper-parameters (e.g. weights with weight decay, biases and norms without).
public struct ParameterGroup {
    public var parameters: [Parameter]
    /// Weight decay for this group (nil: the optimizer's default).
    public var weightDecay: Float?

    public init(_ parameters: [Parameter], weightDecay: Float? = nil) {
        self.parameters = parameters
        self.weightDecay = weightDecay
    }

    /// GPT-2 practice: decay matrices (rank ≥ 2), not biases or layer-norm parameters.
    public static func decayingMatrices(of module: Module, weightDecay: Float) -> [ParameterGroup] {
        let parameters = module.parameters
        return [ParameterGroup(parameters.filter { $0.rank >= 2 }, weightDecay: weightDecay),
                ParameterGroup(parameters.filter { $0.rank < 2 }, weightDecay: 0)]
    }
}

/// An optimizer's saved state: tensors keyed `<parameter name>.<state>` plus scalar counters.
public struct OptimizerState {
    public var tensors: [String: Tensor]
    public var scalars: [String: Double]

    public init(tensors: [String: Tensor] = [:], scalars: [String: Double] = [:]) {
        self.tensors = tensors
        self.scalars = scalars
    }
}

/// Updates parameters from their gradients.
public protocol Optimizer: AnyObject {
    /// The learning rate used by the next ``step()`` (schedules set it every step).
    var learningRate: Float { get set }
    /// The parameter groups, in order.
    var groups: [ParameterGroup] { get }
    /// Applies one update to every parameter that has a gradient.
    func step()
    /// The state needed to resume bit-identically, as views of the optimizer's own buffers (no copy): valid
    /// until the next ``step()`` or ``load(_:)``. A checkpoint writes these without a second copy in memory;
    /// ``state()`` copies them.
    func stateViews() -> OptimizerState
    /// Restores a state from ``state()``; throws if it does not match these parameters.
    func load(_ state: OptimizerState) throws
    /// Clears the gradients before the next accumulation. The default drops them (`grad = nil`); fused
    /// optimizers fill their flat gradient buffer with zeros instead so every `grad` stays a view into it.
    func zeroGradients()
}

extension Optimizer {
    /// The state needed to resume bit-identically (a copy: later steps do not change it).
    public func state() -> OptimizerState {
        var state = stateViews()
        state.tensors = state.tensors.mapValues { $0.copy() }
        return state
    }

    /// Every parameter of every group.
    public var parameters: [Parameter] { groups.flatMap(\.parameters) }

    /// Clears every parameter's gradient (sets it to nil).
    public func zeroGradients() {
        for parameter in parameters { parameter.grad = nil }
    }

    /// The name a parameter's state is saved under (its module name, or its position).
    func stateName(_ parameter: Parameter, index: Int) -> String { parameter.name ?? "param\(index)" }

    /// Checks that a saved state tensor exists and has the parameter's shape.
    func savedTensor(_ state: OptimizerState, _ key: String, shape: [Int]) throws -> Tensor {
        guard let tensor = state.tensors[key] else {
            throw ConvoyError.incompatible("optimizer state has no tensor '\(key)'; the checkpoint was saved for a different model or optimizer")
        }
        guard tensor.shape == shape else {
            throw ConvoyError.incompatible("optimizer state '\(key)' has shape \(tensor.shape), the parameter has \(shape)")
        }
        return tensor.converted(to: .float32).copy()
    }
}
