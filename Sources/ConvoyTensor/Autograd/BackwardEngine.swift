/// Runs reverse-mode differentiation over the tape that produced a tensor.
///
/// Like PyTorch's engine it counts, for every node and every leaf, how many gradient contributions it will
/// receive, and runs a node (or finalises a leaf) only once all have arrived. Ready nodes run latest-created
/// first, so backward visits operations in the reverse of forward order, and a leaf's hooks fire the moment
/// its gradient for this pass is complete — early enough for data parallelism to overlap communication
/// with the rest of backward.
enum BackwardEngine {
    static func run(root: Tensor, gradient: Tensor) {
        precondition(root.requiresGrad, "backward() called on a tensor that does not require gradients; is any input a parameter (requiresGrad) and was the op recorded outside withNoGrad?")
        precondition(gradient.shape == root.shape, "the output gradient has shape \(gradient.shape) but the output has shape \(root.shape)")
        guard let rootNode = root.gradNode else {
            root.deliverFinalGradient(gradient.copy())
            return
        }
        precondition(rootNode.backward != nil, "backward() reached operation '\(rootNode.operation)' a second time: its saved tensors were freed by an earlier backward pass")

        // Count dependencies over the graph reachable from the root.
        var nodeDependencies: [ObjectIdentifier: Int] = [:]
        var leafDependencies: [ObjectIdentifier: Int] = [:]
        var visited: Set<ObjectIdentifier> = [ObjectIdentifier(rootNode)]
        var stack = [rootNode]
        while let node = stack.popLast() {
            for input in node.inputs {
                if let inputNode = input.gradNode {
                    let id = ObjectIdentifier(inputNode)
                    nodeDependencies[id, default: 0] += 1
                    if visited.insert(id).inserted { stack.append(inputNode) }
                } else {
                    leafDependencies[ObjectIdentifier(input), default: 0] += 1
                }
            }
        }

        var pendingNodeGradients: [ObjectIdentifier: Tensor] = [ObjectIdentifier(rootNode): gradient]
        var pendingLeafGradients: [ObjectIdentifier: Tensor] = [:]
        var ready = NodeHeap()
        ready.push(rootNode)

        while let node = ready.pop() {
            let nodeID = ObjectIdentifier(node)
            guard let outputGradient = pendingNodeGradients.removeValue(forKey: nodeID), let backward = node.backward else {
                preconditionFailure("backward reached operation '\(node.operation)' whose saved tensors were already freed by an earlier backward pass")
            }
            let inputs = node.inputs
            let inputGradients = withNoGrad { backward(outputGradient) }
            precondition(inputGradients.count == inputs.count, "operation '\(node.operation)' returned \(inputGradients.count) gradients for \(inputs.count) inputs")
            node.release()

            for (input, maybeGradient) in zip(inputs, inputGradients) {
                if let inputNode = input.gradNode {
                    let id = ObjectIdentifier(inputNode)
                    if let inputGradient = maybeGradient {
                        checkShape(inputGradient, of: input, from: node)
                        pendingNodeGradients[id] = sum(pendingNodeGradients[id], inputGradient)
                    }
                    let remaining = nodeDependencies[id]! - 1
                    nodeDependencies[id] = remaining
                    if remaining == 0 {
                        if pendingNodeGradients[id] != nil {
                            ready.push(inputNode)
                        } else {
                            // No gradient reached this branch (all contributions were nil): skip its subtree
                            // but still release the dependencies it holds, so leaves below it finish.
                            propagateNoGradient(from: inputNode, &nodeDependencies, &leafDependencies, &pendingNodeGradients, &pendingLeafGradients, &ready)
                        }
                    }
                } else {
                    let id = ObjectIdentifier(input)
                    if let inputGradient = maybeGradient {
                        checkShape(inputGradient, of: input, from: node)
                        pendingLeafGradients[id] = sum(pendingLeafGradients[id], inputGradient)
                    }
                    let remaining = leafDependencies[id]! - 1
                    leafDependencies[id] = remaining
                    if remaining == 0, let final = pendingLeafGradients.removeValue(forKey: id) {
                        input.deliverFinalGradient(final)
                    }
                }
            }
        }
    }

    private static func propagateNoGradient(
        from node: GradNode,
        _ nodeDependencies: inout [ObjectIdentifier: Int], _ leafDependencies: inout [ObjectIdentifier: Int],
        _ pendingNodeGradients: inout [ObjectIdentifier: Tensor], _ pendingLeafGradients: inout [ObjectIdentifier: Tensor],
        _ ready: inout NodeHeap
    ) {
        var stack = [node]
        while let current = stack.popLast() {
            let inputs = current.inputs
            current.release()
            for input in inputs {
                if let inputNode = input.gradNode {
                    let id = ObjectIdentifier(inputNode)
                    let remaining = nodeDependencies[id]! - 1
                    nodeDependencies[id] = remaining
                    if remaining == 0 {
                        if pendingNodeGradients[id] != nil { ready.push(inputNode) } else { stack.append(inputNode) }
                    }
                } else {
                    let id = ObjectIdentifier(input)
                    let remaining = leafDependencies[id]! - 1
                    leafDependencies[id] = remaining
                    if remaining == 0, let final = pendingLeafGradients.removeValue(forKey: id) {
                        input.deliverFinalGradient(final)
                    }
                }
            }
        }
    }

    private static func checkShape(_ gradient: Tensor, of input: Tensor, from node: GradNode) {
        precondition(gradient.shape == input.shape, "operation '\(node.operation)' produced a gradient of shape \(gradient.shape) for an input of shape \(input.shape)")
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
    public func backward() {
        precondition(count == 1, "backward() without an output gradient needs a one-element tensor (a loss); this one has shape \(shape). Use backward(outputGradient:) for non-scalar outputs")
        BackwardEngine.run(root: self, gradient: Tensor.full(shape, value: 1))
    }

    /// Back-propagates from a non-scalar output given the gradient of the objective with respect to it
    /// (a pipeline stage receives it from the next stage).
    public func backward(outputGradient: Tensor) {
        // A private copy: pass-through ops would otherwise hand the caller's tensor to a leaf as its .grad,
        // and the next accumulation would write into it.
        let gradient = withNoGrad { outputGradient.converted(to: .float32).copy() }
        BackwardEngine.run(root: self, gradient: gradient)
    }
}
