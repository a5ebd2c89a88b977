import ConvoyComm
import ConvoyNN
import ConvoyTensor
import Foundation

/// The synchronizer of a rank that has no data-parallel peers: gradients stay where backward put them and the
/// optimizer updates the module's parameters directly.
public final class LocalGradients: ReplicatedGradients {
    public let module: Module
    public let optimizer: any Optimizer

    public init(module: Module, optimizer: any Optimizer) {
        self.module = module
        self.optimizer = optimizer
    }

    public var dataParallelGroup: (any ProcessGroup)? { nil }
    public var summary: String { "no data parallelism" }

    public func backward(synchronizing: Bool, _ body: () throws -> Void) throws { try body() }
    public func finishBackward() throws {}
    public func finishGradientSynchronization() throws {}
    public func zeroGradients() { optimizer.zeroGradients() }
}
