/// Activation recompute (gradient checkpointing): a piece of the forward whose intermediate activations are
/// not kept, but computed again when backward reaches it.
extension Tensor {
    /// Runs `body` on `input` without recording its operations, keeping only `input`; backward runs `body`
    /// again on the tape (at the same ``ComputePrecision``) and back-propagates through that replay.
    ///
    /// The replay computes exactly what the first run computed — every kernel is deterministic and dropout
    /// masks are a pure function of their ``DropoutKey`` and position — so the gradients are bit-identical to
    /// running `body` on the tape directly. `parameters` are the leaves `body` reads (the op is recorded when
    /// they require gradients even if `input` does not); their gradients are delivered by the replay's own
    /// backward, firing their hooks as a direct backward would.
    public static func recomputing(_ input: Tensor, parameters: [Tensor], _ body: @escaping (Tensor) -> Tensor) -> Tensor {
        guard GradMode.isEnabled, input.requiresGrad || parameters.contains(where: \.requiresGrad) else { return body(input) }
        let precision = ComputePrecision.current
        let output = withNoGrad { body(input) }
        let result = Tensor(storage: output.storage, shape: output.shape, strides: output.strides, offset: output.offset)
        return record(result, operation: "recompute", inputs: [input] + parameters) { gradient in
            let replayInput = input.detached()
            replayInput.requiresGrad = input.requiresGrad
            let replayed = ComputePrecision.with(precision) { GradMode.withGrad { body(replayInput) } }
            if replayed.requiresGrad { try replayed.backward(outputGradient: gradient) }
            return [replayInput.grad] + parameters.map { _ in nil }
        }
    }
}
