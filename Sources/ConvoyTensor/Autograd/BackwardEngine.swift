/// Runs reverse-mode differentiation over the tape that produced a tensor.
///
/// Like PyTorch's engine it counts, for every node and every leaf, how many gradient contributions it will
/// receive, and runs a node (or finalises a leaf) only once all have arrived. Ready nodes run latest-created
/// first, so backward visits operations in the reverse of forward order, and a leaf's hooks fire the moment
/// its gradient for this pass is complete — early enough for data parallelism to overlap communication
/// with the rest of backward.
///
/// A step that throws (an operation's backward, an interceptor, a hook) ends the pass at once: see
/// ``BackwardError`` for the error and the state the gradients are left in.
enum BackwardEngine {
    static func run(root: Tensor, gradient: Tensor) throws {
        precondition(root.requiresGrad, "backward() called on a tensor that does not require gradients; is any input a parameter (requiresGrad) and was the op recorded outside withNoGrad?")
        precondition(gradient.shape == root.shape, "the output gradient has shape \(gradient.shape) but the output has shape \(root.shape)")
        guard let rootNode = root.gradNode else {
            try root.deliverFinalGradient(gradient.copy())
            return
        }
        precondition(rootNode.backward != nil, "backward() reached operation '\(rootNode.operation)' a second time: its saved tensors were freed by an earlier backward pass")
        var pass = BackwardPass(root: rootNode, gradient: gradient)
        do {
            try pass.run()
        } catch {
            // Nothing may run the rest of this tape later (its pending gradients are gone): free its saved
            // tensors now rather than when the caller drops the output.
            pass.releaseAll()
            throw error
        }
    }
}

/// The state of one backward pass: remaining dependencies and pending gradients per node and leaf.
private struct BackwardPass {
    private var nodeDependencies: [ObjectIdentifier: Int] = [:]
    private var leafDependencies: [ObjectIdentifier: Int] = [:]
    private var pendingNodeGradients: [ObjectIdentifier: Tensor] = [:]
    private var pendingLeafGradients: [ObjectIdentifier: Tensor] = [:]
    private var ready = NodeHeap()
    /// Every node reachable from the root, released at once when the pass fails.
    private var reachable: [GradNode] = []

    /// Counts, for every node and leaf reachable from the root, how many contributions it will receive.
    init(root: GradNode, gradient: Tensor) {
        var visited: Set<ObjectIdentifier> = [ObjectIdentifier(root)]
        var stack = [root]
        reachable = [root]
        while let node = stack.popLast() {
            for input in node.inputs {
                switch input {
                case .node(let inputNode, _):
                    let id = ObjectIdentifier(inputNode)
                    nodeDependencies[id, default: 0] += 1
                    if visited.insert(id).inserted {
                        stack.append(inputNode)
                        reachable.append(inputNode)
                    }
                case .leaf(let leaf):
                    leafDependencies[ObjectIdentifier(leaf), default: 0] += 1
                }
            }
        }
        pendingNodeGradients[ObjectIdentifier(root)] = gradient
        ready.push(root)
    }

    /// Releases every node of the pass (after a failure; nodes that already ran are released already).
    func releaseAll() {
        for node in reachable { node.release() }
    }

    mutating func run() throws {
        while let node = ready.pop() {
            guard let outputGradient = pendingNodeGradients.removeValue(forKey: ObjectIdentifier(node)), let backward = node.backward else {
                preconditionFailure("backward reached operation '\(node.operation)' whose saved tensors were already freed by an earlier backward pass")
            }
            let inputs = node.inputs
            let inputGradients = try BackwardError.naming(node.operation) { try withNoGrad { try backward(outputGradient) } }
            precondition(inputGradients.count == inputs.count, "operation '\(node.operation)' returned \(inputGradients.count) gradients for \(inputs.count) inputs")
            node.release()
            for (input, inputGradient) in zip(inputs, inputGradients) {
                if let inputGradient {
                    precondition(inputGradient.shape == input.shape, "operation '\(node.operation)' produced a gradient of shape \(inputGradient.shape) for an input of shape \(input.shape)")
                }
                try contribute(inputGradient, to: input)
            }
        }
    }

    /// Records one contribution (possibly none) to an input; when it was the last one, the input's node
    /// becomes ready, or its leaf receives its final gradient.
    private mutating func contribute(_ gradient: Tensor?, to input: GradEdge) throws {
        switch input {
        case .node(let inputNode, _):
            let id = ObjectIdentifier(inputNode)
            if let gradient { pendingNodeGradients[id] = Self.sum(pendingNodeGradients[id], gradient) }
            let remaining = nodeDependencies[id]! - 1
            nodeDependencies[id] = remaining
            guard remaining == 0 else { return }
            if pendingNodeGradients[id] != nil {
                ready.push(inputNode)
            } else {
                // No gradient reached this node: skip its backward, but release what it depends on so
                // the leaves below it still finish.
                let inputs = inputNode.inputs
                inputNode.release()
                for below in inputs { try contribute(nil, to: below) }
            }
        case .leaf(let leaf):
            let id = ObjectIdentifier(leaf)
            if let gradient { pendingLeafGradients[id] = Self.sum(pendingLeafGradients[id], gradient) }
            let remaining = leafDependencies[id]! - 1
            leafDependencies[id] = remaining
            if remaining == 0, let final = pendingLeafGradients.removeValue(forKey: id) {
                try leaf.deliverFinalGradient(final)
            }
        }
    }

    /// Adds two gradient contributions out of place: a backward function may hand the same tensor to two
    /// inputs, so neither may be modified.
    private static func sum(_ existing: Tensor?, _ new: Tensor) -> Tensor {
        guard let existing else { return new }
        return withNoGrad { existing + new }
    }
}

/// A max-heap of nodes by creation sequence.
private struct NodeHeap {
    private var items: [GradNode] = []

    mutating func push(_ node: GradNode) {
        items.append(node)
        var child = items.count - 1
        while child > 0 {
            let parent = (child - 1) / 2
            if items[parent].sequence >= items[child].sequence { break }
            items.swapAt(parent, child)
            child = parent
        }
    }

    mutating func pop() -> GradNode? {
        guard !items.isEmpty else { return nil }
        items.swapAt(0, items.count - 1)
        let top = items.removeLast()
        var parent = 0
        while true {
            let left = 2 * parent + 1, right = left + 1
            var largest = parent
            if left < items.count && items[left].sequence > items[largest].sequence { largest = left }
            if right < items.count && items[right].sequence > items[largest].sequence { largest = right }
            if largest == parent { break }
            items.swapAt(parent, largest)
            parent = largest
        }
        return top
    }
}

extension Tensor {
    /// Back-propagates from this scalar (one-element) tensor, as from a loss.
    ///
    /// Throws a ``BackwardError`` naming the step when an operation's backward, a gradient interceptor or a
    /// post-accumulate-grad hook throws (a collective inside backward failed); the pass stops there and the
    /// gradients are left as ``BackwardError`` describes.
    public func backward() throws {
        precondition(count == 1, "backward() without an output gradient needs a one-element tensor (a loss); this one has shape \(shape). Use backward(outputGradient:) for non-scalar outputs")
        try BackwardEngine.run(root: self, gradient: Tensor.full(shape, value: 1))
    }

    /// Back-propagates from a non-scalar output given the gradient of the objective with respect to it
    /// (a pipeline stage receives it from the next stage). Errors as ``backward()``.
    public func backward(outputGradient: Tensor) throws {
        // A private copy: pass-through ops would otherwise hand the caller's tensor to a leaf as its .grad,
        // and the next accumulation would write into it.
        let gradient = withNoGrad { outputGradient.converted(to: .float32).copy() }
        try BackwardEngine.run(root: self, gradient: gradient)
    }
}
