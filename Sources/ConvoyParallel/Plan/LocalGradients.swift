import ConvoyComm
import ConvoyNN
import ConvoyTensor
import Foundation

/// The synchronizer of a rank that has no data-parallel peers: gradients stay where backward put them and the
/// optimizer updates the module's parameters directly.
public final class LocalGradients: GradientSynchronizer {
    public let module: Module
    public let optimizer: any Optimizer

    public init(module: Module, optimizer: any Optimizer) {
        self.module = module
        self.optimizer = optimizer
    }

    public var dataParallelGroup: (any ProcessGroup)? { nil }
    public var zeroStage: Int { 0 }
    public var gradientPlacementAlongDataParallel: Placement { .replicate }
    public var summary: String { "no data parallelism" }

    public func backward(synchronizing: Bool, _ body: () throws -> Void) throws { try body() }
    public func finishBackward() throws {}
    public func finishGradientSynchronization() throws {}

    public func accumulatedGradient(of parameter: Parameter) -> Tensor {
        if parameter.grad == nil { parameter.grad = Tensor.zeros(parameter.shape) }
        return parameter.grad!
    }

    public func squaredNorm(counting counts: (Parameter) -> Bool) -> Double {
        Self.sumOfSquares(ofGradients: module.parameters.filter(counts))
    }

    public func scaleGradients(by factor: Float) {
        for parameter in module.parameters { parameter.grad?.scaleInPlace(factor) }
    }

    public func step() throws { optimizer.step() }
    public func zeroGradients() { optimizer.zeroGradients() }
    public func gatherFullParameters() throws {}
    public func releaseFullParameters(copyingBack: Bool) {}
    public func checkpointLayoutIndex() throws -> Data? { nil }
    public func checkLayout(_ index: Data, source: String) throws {}
}
