import ConvoyComm
import ConvoyTensor

/// A tensor distributed along one mesh axis: this rank's local tensor, the axis's group, and the placement
/// along it (read from and written to the local tensor's ``ConvoyTensor/Tensor/placement``, so operators see it).
/// Along the other axes a tensor-parallel activation is whatever its data is (data parallelism splits the batch
/// before the model sees it).
public struct DistributedTensor {
    /// This rank's piece (Shard), summand (Partial) or copy (Replicate).
    public let local: Tensor
    /// The mesh axis the placement is along.
    public let axis: MeshAxis
    /// The ranks along that axis (group rank = position along the axis).
    public let group: any ProcessGroup

    /// Views `local` with the placement it carries along `axis`.
    public init(local: Tensor, axis: MeshAxis = .tp, group: any ProcessGroup) {
        self.local = local
        self.axis = axis
        self.group = group
    }

    /// The placement along ``axis``.
    public var placement: Placement { local.placement.along(axis.rawValue) }

    /// The shape of the whole tensor.
    public var wholeShape: [Int] {
        guard case .shard(let dim) = placement else { return local.shape }
        var shape = local.shape
        shape[dim] *= group.size
        return shape
    }

    /// This rank's piece of `whole` (the same on every rank) placed as `placement`: a Shard takes its slice, a
    /// Partial is the whole tensor on rank 0 and zeros elsewhere (their sum is the whole), a Replicate a copy.
    public static func distribute(_ whole: Tensor, as placement: Placement, axis: MeshAxis = .tp, group: any ProcessGroup) -> DistributedTensor {
        let local: Tensor
        switch placement {
        case .replicate: local = whole.detached().contiguous().copy()
        case .partial: local = group.rank == 0 ? whole.detached().contiguous().copy() : Tensor.zeros(whole.shape)
        case .shard(let dim): local = Redistribution.piece(of: whole, dim: dim < 0 ? dim + whole.rank : dim, group: group)
        }
        local.requiresGrad = whole.requiresGrad
        return DistributedTensor(local: placed(local, placement, axis: axis), axis: axis, group: group)
    }

    /// Moves the tensor to `target` by the one redistribution that connects the placements (the move is on the
    /// tape; its backward is the dual). `arriving` says whether the consumer's gradient will arrive partial.
    ///
    /// - Throws: ``ConvoyTensor/ConvoyError/invalidConfiguration(_:)`` for a move no redistribution makes
    ///   (Shard(a) → Shard(b), anything → Partial), or the communication error of the collective.
    public func redistributed(to target: Placement, arriving: Redistribution.ArrivingGradient = .whole) throws -> DistributedTensor {
        let moved: Tensor
        switch (placement, target) {
        case (.replicate, .replicate): moved = arriving == .partial ? Redistribution.partialGradient(local, group: group) : local
        case (.partial, .partial): moved = local
        case (.shard(let a), .shard(let b)) where a == b: moved = local
        case (.partial, .replicate): moved = try Redistribution.allReduce(local, group: group, arriving: arriving)
        case (.shard(let dim), .replicate): moved = try Redistribution.allGather(local, dim: dim, group: group, arriving: arriving)
        case (.partial, .shard(let dim)): moved = try Redistribution.reduceScatter(local, dim: dim, group: group)
        case (.replicate, .shard(let dim)): moved = Redistribution.slice(local, dim: dim, group: group)
        default:
            throw ConvoyError.invalidConfiguration("no redistribution moves a tensor from \(placement) to \(target) along \(axis)")
        }
        return DistributedTensor(local: Self.placed(moved === local ? local : moved, target, axis: axis), axis: axis, group: group)
    }

    /// Whether ``redistributed(to:arriving:)`` can move `source` to `target`.
    public static func canMove(from source: Placement, to target: Placement) -> Bool {
        switch (source, target) {
        case (.replicate, .replicate), (.partial, .partial), (.partial, .replicate), (.shard, .replicate), (.partial, .shard), (.replicate, .shard): return true
        case (.shard(let a), .shard(let b)): return a == b
        default: return false
        }
    }

    /// The whole tensor on every rank (a Replicate redistribution, recorded).
    public func whole() throws -> Tensor { try redistributed(to: .replicate).local }

    /// `tensor` with its placement along `axis` set to `placement`.
    @discardableResult
    static func placed(_ tensor: Tensor, _ placement: Placement, axis: MeshAxis) -> Tensor {
        if placement == .replicate { tensor.placement.axes[axis.rawValue] = nil } else { tensor.placement.axes[axis.rawValue] = placement }
        return tensor
    }
}
