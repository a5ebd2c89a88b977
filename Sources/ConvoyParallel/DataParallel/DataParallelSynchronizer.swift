import ConvoyComm
import ConvoyNN
import ConvoyTensor
import Foundation

/// DDP as a ``GradientSynchronizer``: ``DataParallel`` reduces the gradients (bucketed all-reduces overlapping
/// backward) and a replicated optimizer updates every replica identically.
public final class DataParallelSynchronizer: ReplicatedGradients {
    public let parallel: DataParallel
    public let module: Module
    public let optimizer: any Optimizer
    /// Whether a backward of this step ran synchronizing; a step whose backwards all accumulated locally (a
    /// pipeline's) marks every parameter holding a gradient ready at the end instead.
    private var synchronizedThisStep = false

    /// Wraps `module` for data parallelism over `group` (collective). `makeOptimizer` receives the module and
    /// whether the gradients are views into data parallelism's fused buffer.
    public init(module: Module, group: any ProcessGroup, options: DataParallelOptions, timeline: Timeline? = nil,
                makeOptimizer: (Module, _ externalGradients: Bool) throws -> any Optimizer) throws {
        self.module = module
        parallel = try DataParallel(module: module, group: group, options: options, timeline: timeline)
        optimizer = try makeOptimizer(module, parallel.fusedGradients != nil)
    }

    public var dataParallelGroup: (any ProcessGroup)? { parallel.group }
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

    public func zeroGradients() { parallel.zeroGradients() }
}
