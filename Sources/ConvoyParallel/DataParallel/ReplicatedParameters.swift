import ConvoyComm
import ConvoyNN
import ConvoyTensor

/// The parameters every data-parallel replica holds and reduces: every parameter of a module whose placement
/// along the dp axis is ``ConvoyTensor/Placement/replicate`` — whatever its placement along other axes, so a
/// tensor-parallel shard is still broadcast and averaged across its data-parallel group — each listed once. A
/// parameter sharded along dp (each replica holds different values) is neither broadcast nor averaged.
enum ReplicatedParameters {
    /// Collects them and broadcasts each from rank 0 of `group` (collective), so replicas start identical
    /// whatever their seeds. Used by plain data parallelism and by every ZeRO stage.
    ///
    /// - Throws: ``ConvoyTensor/ConvoyError/invalidConfiguration(_:)`` for a parameter that is partial along dp
    ///   (a parameter's value cannot be a sum over replicas).
    static func synchronized(_ module: Module, over group: any ProcessGroup) throws -> [(name: String, parameter: Parameter)] {
        let named = module.namedParameters()
        if let partial = named.first(where: { $0.parameter.placement.along(MeshAxis.dp.rawValue) == .partial }) {
            throw ConvoyError.invalidConfiguration("parameter \(partial.name) is Partial along dp; a parameter must be replicated or sharded across data-parallel ranks")
        }
        let parameters = named.filter { $0.parameter.placement.along(MeshAxis.dp.rawValue) == .replicate }
        try withNoGrad {
            for (_, parameter) in parameters { try group.broadcast(parameter, root: 0) }
        }
        return parameters
    }
}
