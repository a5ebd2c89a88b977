import ConvoyComm
import ConvoyNN
import ConvoyTensor

/// A set of parameters whose gradients are all-reduced together, and the state of its reduction this step.
final class GradBucket {
    let index: Int
    /// Parameters in the order backward produces them.
    let parameters: [Parameter]
    /// Where the bucket's gradients are reduced: a slice of the fused gradient buffer (gradients are views
    /// into it, nothing is copied), or the bucket's own buffer (gradients copied in and out).
    let buffer: Tensor
    /// Offset of each parameter's gradient in `buffer`.
    let offsets: [Int]
    let isFusedView: Bool
    var pending: Int
    var work: Work?
    var launchedAt: UInt64 = 0

    init(index: Int, parameters: [Parameter], buffer: Tensor, offsets: [Int], isFusedView: Bool) {
        self.index = index
        self.parameters = parameters
        self.buffer = buffer
        self.offsets = offsets
        self.isFusedView = isFusedView
        pending = parameters.count
    }

    /// Elements in the bucket.
    var count: Int { buffer.count }
    var byteCount: Int { buffer.count * buffer.dtype.byteSize }

    /// Copies the parameters' gradients into the bucket's own buffer (not needed for fused views).
    func gatherGradients() {
        guard !isFusedView else { return }
        let destination = buffer.floatPointer
        for (parameter, offset) in zip(parameters, offsets) {
            let gradient = parameter.grad!.contiguous()
            (destination + offset).update(from: gradient.floatPointer, count: parameter.count)
        }
    }

    /// Copies the reduced values back into the parameters' gradients (not needed for fused views).
    func scatterGradients() {
        guard !isFusedView else { return }
        let source = buffer.floatPointer
        for (parameter, offset) in zip(parameters, offsets) {
            let gradient = parameter.grad!
            precondition(gradient.isContiguous, "gradient of \(parameter.name ?? "a parameter") is not contiguous")
            gradient.floatPointer.update(from: source + offset, count: parameter.count)
        }
    }
}
