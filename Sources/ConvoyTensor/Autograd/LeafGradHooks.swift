/// What a gradient interceptor did with the gradient it was handed.
public enum GradientDisposition: Sendable {
    /// Accumulate the gradient into `grad` as usual.
    case accumulate
    /// The interceptor took the gradient over (e.g. ZeRO-2 wrote it into its shard); `grad` is left alone.
    case consumed
}

/// Identifies a registered hook so it can be removed.
public struct HookHandle: Hashable, Sendable {
    let id: Int
}

/// The hooks of one leaf tensor.
final class LeafGradHooks {
    var interceptor: ((Tensor, Tensor) throws -> GradientDisposition)?
    var postAccumulate: [(id: Int, body: (Tensor) throws -> Void)] = []
    var nextID = 0
}

extension Tensor {
    private var hooks: LeafGradHooks {
        if let leafHooks { return leafHooks }
        let created = LeafGradHooks()
        leafHooks = created
        return created
    }

    /// Registers a hook that runs as soon as this leaf's gradient for the current backward pass is final and
    /// has been accumulated (or taken over by the interceptor). Hooks run in the order backward reaches their
    /// tensors; data parallelism launches its reductions from them. A hook that throws stops the backward pass,
    /// which throws a ``BackwardError`` naming the hook's tensor.
    @discardableResult
    public func registerPostAccumulateGradHook(_ body: @escaping (Tensor) throws -> Void) -> HookHandle {
        let hooks = self.hooks
        hooks.nextID += 1
        hooks.postAccumulate.append((hooks.nextID, body))
        return HookHandle(id: hooks.nextID)
    }

    /// Removes a hook registered with ``registerPostAccumulateGradHook(_:)``.
    public func removeHook(_ handle: HookHandle) {
        leafHooks?.postAccumulate.removeAll { $0.id == handle.id }
    }

    /// Sets (or clears) the function that sees this leaf's final gradient of a backward pass before it is
    /// accumulated, and may take it over instead (`(tensor, gradient) -> disposition`). An interceptor that
    /// throws stops the backward pass as a throwing hook does; the gradient is then not accumulated.
    public func setGradientInterceptor(_ interceptor: ((Tensor, Tensor) throws -> GradientDisposition)?) {
        hooks.interceptor = interceptor
    }

    /// Delivers this backward pass's final gradient to a leaf: interceptor, accumulation, then hooks (the
    /// first that throws ends the delivery, wrapped in a ``BackwardError`` naming it and this tensor).
    func deliverFinalGradient(_ gradient: Tensor) throws {
        precondition(gradient.shape == shape, "gradient of shape \(gradient.shape) delivered to \(name ?? "a tensor") of shape \(shape)")
        var disposition = GradientDisposition.accumulate
        if let interceptor = leafHooks?.interceptor {
            disposition = try BackwardError.naming("gradient interceptor of \(hookTarget)") { try interceptor(self, gradient) }
        }
        if disposition == .accumulate {
            accumulateGradient(gradient)
        }
        if let hooks = leafHooks?.postAccumulate {
            for hook in hooks { try BackwardError.naming("post-accumulate-grad hook of \(hookTarget)") { try hook.body(self) } }
        }
    }

    /// How errors name this leaf.
    private var hookTarget: String { name.map { "'\($0)'" } ?? "an unnamed tensor of shape \(shape)" }

    /// Adds `gradient` into ``grad`` in place (allocating it on first use), so that a `grad` that is a view
    /// into a flat buffer stays one.
    public func accumulateGradient(_ gradient: Tensor) {
        if let existing = grad {
            existing.addInPlace(gradient)
        } else if gradient.isContiguous, gradient.dtype == .float32, gradient.count == gradient.storage.count, isKnownUniquelyReferenced(&gradient.storage) {
            grad = gradient.detached()
        } else {
            grad = gradient.copy()
        }
    }
}
