import ConvoyTensor

/// An axis of the standard hybrid-parallel mesh.
public enum MeshAxis: String, Sendable, CaseIterable, CustomStringConvertible {
    /// Data parallel: replicas that see different samples and reduce gradients.
    case dp
    /// Pipeline parallel: stages that pass activations forward and gradients back.
    case pp
    /// Tensor parallel: ranks that split each layer's matrices.
    case tp

    public var description: String { rawValue }
}

/// The world's ranks arranged as a dp × pp × tp grid, giving each rank its group along every axis.
///
/// **Rank order: tp varies fastest, then dp, then pp.**
///
///     rank = (ppIndex · dp + dpIndex) · tp + tpIndex
///
/// Tensor-parallel peers exchange the most data (every layer, forward and backward), so they take consecutive
/// ranks, which land on the same host when ranks fill hosts in order; pipeline stages exchange the least and
/// take the slowest-varying index, as in Megatron-Core. With dp = pp = tp = 2, ranks 0 and 1 form tp group 0,
/// ranks 0 and 2 form dp group 0, and ranks 0 and 4 form pp group 0.
///
/// Groups along an axis are numbered by the coordinates of the other two axes in the same order (the rank
/// the group would have in the mesh with that axis removed): tp group `ppIndex · dp + dpIndex`, dp group
/// `ppIndex · tp + tpIndex`, pp group `dpIndex · tp + tpIndex`.
public struct DeviceMesh: Sendable, Equatable, CustomStringConvertible {
    /// Number of data-parallel replicas.
    public let dp: Int
    /// Number of pipeline stages.
    public let pp: Int
    /// Number of tensor-parallel ranks per layer.
    public let tp: Int

    /// The axes from slowest- to fastest-varying in the rank order.
    public static let rankOrder: [MeshAxis] = [.pp, .dp, .tp]

    /// A dp × pp × tp mesh over a world of dp·pp·tp ranks.
    ///
    /// - Throws: ``ConvoyTensor/ConvoyError/invalidConfiguration(_:)`` when an axis size is below 1.
    public init(dp: Int, pp: Int, tp: Int) throws {
        for (axis, size) in [(MeshAxis.dp, dp), (.pp, pp), (.tp, tp)] where size < 1 {
            throw ConvoyError.invalidConfiguration("--\(axis) is \(size); every mesh axis needs at least 1 rank (use 1 to leave the axis unused)")
        }
        self.dp = dp
        self.pp = pp
        self.tp = tp
    }

    /// A dp × pp × tp mesh that must cover exactly `worldSize` ranks.
    ///
    /// - Throws: ``ConvoyTensor/ConvoyError/invalidConfiguration(_:)`` when an axis size is below 1 or when
    ///   `worldSize` is not dp·pp·tp.
    public init(dp: Int, pp: Int, tp: Int, worldSize: Int) throws {
        try self.init(dp: dp, pp: pp, tp: tp)
        try checkWorldSize(worldSize)
    }

    /// Number of ranks the mesh covers: dp·pp·tp.
    public var size: Int { dp * pp * tp }

    /// The number of ranks along `axis`.
    public func size(of axis: MeshAxis) -> Int {
        switch axis {
        case .dp: return dp
        case .pp: return pp
        case .tp: return tp
        }
    }

    public var description: String { "mesh dp=\(dp) pp=\(pp) tp=\(tp)" }

    /// Throws unless `worldSize` equals the mesh size, with a message telling the user what to change.
    public func checkWorldSize(_ worldSize: Int) throws {
        guard worldSize == size else {
            throw ConvoyError.invalidConfiguration("world size \(worldSize) is not dp·pp·tp = \(dp)·\(pp)·\(tp) = \(size); change --dp/--pp/--tp")
        }
    }

    /// The mesh coordinates of world rank `rank`.
    public func coordinates(of rank: Int) -> (dp: Int, pp: Int, tp: Int) {
        precondition(rank >= 0 && rank < size, "rank \(rank) is outside \(self) (ranks 0..<\(size))")
        return (dp: (rank / tp) % dp, pp: rank / (tp * dp), tp: rank % tp)
    }

    /// The world rank at the given coordinates.
    public func rank(dp dpIndex: Int, pp ppIndex: Int, tp tpIndex: Int) -> Int {
        precondition(dpIndex >= 0 && dpIndex < dp && ppIndex >= 0 && ppIndex < pp && tpIndex >= 0 && tpIndex < tp,
                     "coordinates (dp \(dpIndex), pp \(ppIndex), tp \(tpIndex)) are outside \(self)")
        return (ppIndex * dp + dpIndex) * tp + tpIndex
    }

    /// The world ranks of the group along `axis` that contains `rank`, in axis order (position i holds the rank
    /// whose `axis` coordinate is i).
    public func ranksAlong(_ axis: MeshAxis, through rank: Int) -> [Int] {
        let here = coordinates(of: rank)
        return (0..<size(of: axis)).map { position in
            switch axis {
            case .dp: return self.rank(dp: position, pp: here.pp, tp: here.tp)
            case .pp: return self.rank(dp: here.dp, pp: position, tp: here.tp)
            case .tp: return self.rank(dp: here.dp, pp: here.pp, tp: position)
            }
        }
    }

    /// Which group along `axis` holds `rank` (0 ..< size / size(of: axis)); see the type's documentation.
    public func groupIndex(along axis: MeshAxis, of rank: Int) -> Int {
        let here = coordinates(of: rank)
        switch axis {
        case .dp: return here.pp * tp + here.tp
        case .pp: return here.dp * tp + here.tp
        case .tp: return here.pp * dp + here.dp
        }
    }

    /// This rank's position along `axis` (its rank in that axis's group).
    public func position(along axis: MeshAxis, of rank: Int) -> Int {
        let here = coordinates(of: rank)
        switch axis {
        case .dp: return here.dp
        case .pp: return here.pp
        case .tp: return here.tp
        }
    }

    /// Collectively creates this rank's group along each axis of the mesh; every rank of `world` must call it.
    ///
    /// One `split(color:key:name:)` per axis, in the order dp, pp, tp, with colour = the group's index
    /// (``groupIndex(along:of:)``) and key = the rank's position along the axis, so group rank i is the rank at
    /// coordinate i. The groups are named "dp", "pp" and "tp". `world`'s ranks are the mesh's ranks.
    ///
    /// - Throws: ``ConvoyTensor/ConvoyError/invalidConfiguration(_:)`` when `world.size` is not dp·pp·tp (before
    ///   any communication, so every rank fails the same way), or the backend's error from `split`.
    public func groups(of world: any ProcessGroup) throws -> MeshGroups {
        try checkWorldSize(world.size)
        var groups: [MeshAxis: any ProcessGroup] = [:]
        for axis in MeshAxis.allCases {
            let color = groupIndex(along: axis, of: world.rank)
            let key = position(along: axis, of: world.rank)
            guard let group = try world.split(color: color, key: key, name: axis.rawValue) else {
                throw CommunicationError.backend("split of group '\(world.name)' for mesh axis \(axis) (colour \(color)) returned no group for rank \(world.rank)")
            }
            groups[axis] = group
        }
        return MeshGroups(dp: groups[.dp]!, pp: groups[.pp]!, tp: groups[.tp]!)
    }
}

/// One rank's groups along each axis of a ``DeviceMesh``.
public struct MeshGroups: Sendable {
    /// The data-parallel group: the replicas of this rank's (stage, tensor shard).
    public let dp: any ProcessGroup
    /// The pipeline group: the stages of this rank's (replica, tensor shard).
    public let pp: any ProcessGroup
    /// The tensor-parallel group: the shards of this rank's (replica, stage).
    public let tp: any ProcessGroup

    public init(dp: any ProcessGroup, pp: any ProcessGroup, tp: any ProcessGroup) {
        self.dp = dp
        self.pp = pp
        self.tp = tp
    }

    /// The group along `axis`.
    public subscript(axis: MeshAxis) -> any ProcessGroup {
        switch axis {
        case .dp: return dp
        case .pp: return pp
        case .tp: return tp
        }
    }
}
