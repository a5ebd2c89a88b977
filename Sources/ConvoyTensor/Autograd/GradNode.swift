import Synchronization

/// Where one input's gradient goes: the node that computed the input, or the input itself when it is a leaf.
///
/// An edge to a computed input keeps that input's node and shape but not its storage: the tape alone never
/// keeps an activation alive. Only what a backward function captures (the tensors it reads) stays allocated
/// until backward, so an output that no backward reads — a projection's output feeding a residual add, the
/// partial sums before a tensor-parallel all-reduce — is freed as soon as the forward is done with it, as in
/// PyTorch, where a graph edge holds the producing function rather than the tensor.
enum GradEdge {
    /// A computed input: its gradient is passed on to the node that produced it.
    case node(GradNode, shape: [Int])
    /// A leaf (a parameter, or a tensor created with `requiresGrad`): its gradient is delivered to it.
    case leaf(Tensor)

    init(_ input: Tensor) {
        if let node = input.gradNode { self = .node(node, shape: input.shape) } else { self = .leaf(input) }
    }

    /// The input's shape, which its gradient must have.
    var shape: [Int] {
        switch self {
        case .node(_, let shape): return shape
        case .leaf(let tensor): return tensor.shape
        }
    }
}

/// One recorded operation on the autograd tape: the inputs that need gradients and the function that turns
/// the gradient of the operation's output into gradients of those inputs.
final class GradNode {
    /// Creation order; backward runs ready nodes latest-first, the reverse of forward.
    let sequence: Int
    /// The operation's name, for error messages.
    let operation: String
    /// Where the gradients of the operation's inputs that require gradients go (not the inputs themselves).
    private(set) var inputs: [GradEdge]
    /// Maps the output's gradient to one gradient (or nil) per entry of `inputs`; released after use. It may
    /// throw (a collective inside backward failed): the engine stops and reports the error with ``operation``.
    private(set) var backward: ((Tensor) throws -> [Tensor?])?

    private static let counter = Atomic<Int>(0)

    init(operation: String, inputs: [Tensor], backward: @escaping (Tensor) throws -> [Tensor?]) {
        sequence = Self.counter.wrappingAdd(1, ordering: .relaxed).newValue
        self.operation = operation
        self.inputs = inputs.map(GradEdge.init)
        self.backward = backward
    }

    /// Frees the saved tensors once the node has run.
    func release() {
        backward = nil
        inputs = []
    }
}

extension Tensor {
    /// Records `output` as the result of `operation` on `inputs` when any input requires gradients and the
    /// thread records operations. `backward` receives the output's gradient and returns one gradient per
    /// input (nil where an input needs none); it is never called for inputs that do not require gradients.
    /// `backward` may throw — a collective inside backward (a ZeRO-3 gather) that failed: ``backward()``
    /// then stops and throws a ``BackwardError`` naming `operation`.
    @discardableResult
    public static func record(
        _ output: Tensor, operation: String, inputs: [Tensor], backward: @escaping (Tensor) throws -> [Tensor?]
    ) -> Tensor {
        guard GradMode.isEnabled, inputs.contains(where: { $0.requiresGrad }) else { return output }
        let needed = inputs.map(\.requiresGrad)
        let tracked = inputs.filter(\.requiresGrad)
        output.requiresGrad = true
        if needed.allSatisfy({ $0 }) {
            output.gradNode = GradNode(operation: operation, inputs: tracked, backward: backward)
        } else {
            output.gradNode = GradNode(operation: operation, inputs: tracked) { gradient in
                var kept: [Tensor?] = []
                for (inputGradient, isNeeded) in zip(try backward(gradient), needed) where isNeeded {
                    kept.append(inputGradient)
                }
                return kept
            }
        }
        return output
    }
}
