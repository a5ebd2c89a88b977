import ConvoyComm
import ConvoyNN
import ConvoyTensor
import Foundation

/// A synchronizer whose final gradients are whole on every replica, in the module's parameters' `grad` (no
/// synchronizer at all, and DDP): the norm, scaling, step and checkpoint layout are the same for both and are
/// written here once.
public protocol ReplicatedGradients: GradientSynchronizer {
    /// The module whose parameters the optimizer updates.
    var module: Module { get }
}

extension ReplicatedGradients {
    public var gradientPlacementAlongDataParallel: Placement { .replicate }
    public var zeroStage: Int { 0 }

    public func accumulatedGradient(of parameter: Parameter) -> Tensor {
        if parameter.grad == nil { parameter.grad = Tensor.zeros(parameter.shape) }
        return parameter.grad!
    }

    public func squaredNorm(counting counts: (Parameter) -> Bool) -> Double {
        GradientClipping.sumOfSquaredGradients(module.parameters.filter(counts))
    }

    public func scaleGradients(by factor: Float) {
        for parameter in module.parameters { parameter.grad?.scaleInPlace(factor) }
    }

    public func step() throws { optimizer.step() }
    public func gatherFullParameters() throws {}
    public func releaseFullParameters(copyingBack: Bool) {}
    public func finishPendingUpdates() throws {}
    public var checkpointSlices: [CheckpointSlice] { module.namedParameters().map { CheckpointSlice(whole: $0.parameter, name: $0.name) } }
    public var residentParameterSlices: [CheckpointSlice] { checkpointSlices }
    /// The parameters are their own masters at rest (``BFloat16ComputeCopies`` rounds them only during a step).
    public func parameterValuesLoaded() {}
}
