import ConvoyComm
import ConvoyNN
import ConvoyTensor
import Foundation

/// DDP as a ``GradientSynchronizer``: ``DataParallel`` reduces the gradients (bucketed all-reduces overlapping
/// backward) and a replicated optimizer updates every replica identically.
public final class DataParallelSynchronizer: GradientSynchronizer {
    public let parallel: DataParallel
    public let module: Module
    public let optimizer: any Optimizer
    /// Whether a backward of this step ran synchronizing; a step whose backwards all accumulated locally (a
    /// pipeline's) marks every parameter holding a gradient ready at the end instead.
    private var synchronizedThisStep = false

    /// Wraps `module` for data parallelism over `group` (collective). `makeOptimizer` receives the module and
    /// whether the gradients are views into data parallelism's fused buffer.
    public init(module: Module, group: any ProcessGroup, options: DataParallelOptions, timeline: Timeline? = nil,
                makeOptimizer: (Module, _ externalGradients: Bool) -> any Optimizer) throws {
        self.module = module
        parallel = try DataParallel(module: module, group: group, options: options, timeline: timeline)
        optimizer = makeOptimizer(module, parallel.fusedGradients != nil)
    }

    public var dataParallelGroup: (any ProcessGroup)? { parallel.group }
    public var zeroStage: Int { 0 }
    public var gradientPlacementAlongDataParallel: Placement { .replicate }
    public var summary: String { "data parallel over \(parallel.group.size) ranks, \(parallel.bucketCount) buckets" }

    public func backward(synchronizing: Bool, _ body: () throws -> Void) throws {
        if synchronizing {
            synchronizedThisStep = true
            try body()
        } else {
            try parallel.withoutSynchronization(body)
        }
    }

    public func finishBackward() throws {}

    public func finishGradientSynchronization() throws {
        defer { synchronizedThisStep = false }
        if synchronizedThisStep { try parallel.finishGradientSynchronization() } else { try parallel.reduceAccumulatedGradients() }
    }

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
    public func zeroGradients() { parallel.zeroGradients() }
    public func gatherFullParameters() throws {}
    public func releaseFullParameters(copyingBack: Bool) {}
    public func checkpointLayoutIndex() throws -> Data? { nil }
    public func checkLayout(_ index: Data, source: String) throws {}
}
