import ConvoyComm
import ConvoyNN
import ConvoyTensor

/// The parameters every data-parallel replica holds and reduces: all of a module's parameters except those
/// already sharded across a model-parallel group (``ConvoyTensor/Tensor/isDistributed``), each listed once.
enum ReplicatedParameters {
    /// Collects them and broadcasts each from rank 0 of `group` (collective), so replicas start identical
    /// whatever their seeds. Used by plain data parallelism and by every ZeRO stage.
    static func synchronized(_ module: Module, over group: any ProcessGroup) throws -> [(name: String, parameter: Parameter)] {
        let parameters = module.namedParameters().filter { !$0.parameter.isDistributed }
        try withNoGrad {
            for (_, parameter) in parameters { try group.broadcast(parameter, root: 0) }
        }
        return parameters
    }
}
