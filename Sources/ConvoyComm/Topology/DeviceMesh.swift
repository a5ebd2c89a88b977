import Foundation
import ConvoyTensor

/// A named axis of a ``DeviceMesh``. The strategies Convoy runs today use `tp`, `dp` and `pp`; `cp` (context)
/// and `ep` (expert) parallelism have their axes already, so a mesh can name them before a strategy uses them.
public struct MeshAxis: RawRepresentable, Hashable, Sendable, CustomStringConvertible, ExpressibleByStringLiteral {
    public let rawValue: String

    public init(rawValue: String) { self.rawValue = rawValue }
    public init(stringLiteral value: String) { rawValue = value }

    /// Data parallel: replicas that see different samples and reduce gradients.
    public static let dp: MeshAxis = "dp"
    /// Pipeline parallel: stages that pass activations forward and gradients back.
    public static let pp: MeshAxis = "pp"
    /// Tensor parallel: ranks that split each layer's matrices.
    public static let tp: MeshAxis = "tp"
    /// Context parallel: ranks that split the sequence of every sample.
    public static let cp: MeshAxis = "cp"
    /// Expert parallel: ranks that hold different experts of a mixture-of-experts layer.
    public static let ep: MeshAxis = "ep"

    /// Every axis a mesh may name, in Megatron's default order (fastest-varying first).
    public static let known: [MeshAxis] = [.tp, .cp, .ep, .dp, .pp]
    /// The axes every mesh has (those not named in an order are appended with size 1).
    public static let required: [MeshAxis] = [.tp, .dp, .pp]

    public var description: String { rawValue }
}

/// The world's ranks arranged as an N-dimensional grid with named axes in a user-given order, giving each rank
/// its group along every axis.
///
/// **Rank order: the first axis of ``axes`` varies fastest.** The default order is `tp-dp-pp`, as in
/// Megatron-Core:
///
///     rank = tpIndex + tp · (dpIndex + dp · ppIndex)
///
/// Tensor-parallel peers exchange the most data (every layer, forward and backward), so they take consecutive
/// ranks, which land on the same host when ranks fill hosts in order; pipeline stages exchange the least and
/// take the slowest-varying index. With dp = pp = tp = 2, ranks 0 and 1 form tp group 0, ranks 0 and 2 form dp
/// group 0, and ranks 0 and 4 form pp group 0.
///
/// Groups along an axis are numbered by the coordinates of the other axes in the same order (the rank the
/// group would have in the mesh with that axis removed). One generic generator (``groups(along:)``) produces
/// every axis's groups.
public struct DeviceMesh: Sendable, Equatable, CustomStringConvertible {
    /// The axes, fastest-varying first.
    public let axes: [MeshAxis]
    /// The size of each axis, aligned with ``axes``.
    public let sizes: [Int]

    /// The default order, fastest-varying first (Megatron's `tp-dp-pp`).
    public static let defaultOrder: [MeshAxis] = [.tp, .dp, .pp]

    /// A mesh with `sizes` along the axes of `order` (fastest-varying first). Axes of ``MeshAxis/required`` that
    /// the order leaves out are appended (slowest) with size 1; axes the order names but `sizes` does not have
    /// size 1.
    ///
    /// - Throws: ``ConvoyTensor/ConvoyError/invalidConfiguration(_:)`` for an axis named twice, an unknown axis,
    ///   a size for an axis the order does not name, or a size below 1.
    public init(order: [MeshAxis] = DeviceMesh.defaultOrder, sizes: [MeshAxis: Int]) throws {
        var axes: [MeshAxis] = []
        for axis in order {
            guard MeshAxis.known.contains(axis) else {
                throw ConvoyError.invalidConfiguration("mesh axis '\(axis)' is unknown; use axes from \(MeshAxis.known.map(\.rawValue).joined(separator: ", ")), e.g. parallel.order = \"tp-dp-pp\"")
            }
            guard !axes.contains(axis) else {
                throw ConvoyError.invalidConfiguration("mesh axis '\(axis)' appears twice in the order \(order.map(\.rawValue).joined(separator: "-")); name each axis once")
            }
            axes.append(axis)
        }
        for axis in MeshAxis.required where !axes.contains(axis) { axes.append(axis) }
        for (axis, size) in sizes {
            guard axes.contains(axis) else {
                throw ConvoyError.invalidConfiguration("mesh axis '\(axis)' has size \(size) but the order \(axes.map(\.rawValue).joined(separator: "-")) does not name it; add it to parallel.order")
            }
        }
        let resolved = axes.map { sizes[$0] ?? 1 }
        for (axis, size) in zip(axes, resolved) where size < 1 {
            throw ConvoyError.invalidConfiguration("--\(axis) is \(size); every mesh axis needs at least 1 rank (use 1 to leave the axis unused)")
        }
        let (_, overflow) = resolved.reduce((1, false)) { partial, size in
            let (product, over) = partial.0.multipliedReportingOverflow(by: size)
            return (product, partial.1 || over)
        }
        guard !overflow else {
            throw ConvoyError.invalidConfiguration("mesh sizes \(resolved.map(String.init).joined(separator: "×")) overflow; use fewer ranks")
        }
        self.axes = axes
        self.sizes = resolved
    }

    /// Parses an order written as axis names joined by `-` (`"tp-dp-pp"`, fastest-varying first).
    ///
    /// - Throws: ``ConvoyTensor/ConvoyError/invalidConfiguration(_:)`` for an empty or unknown axis name.
    public static func parseOrder(_ text: String) throws -> [MeshAxis] {
        let names = text.split(separator: "-", omittingEmptySubsequences: false).map { $0.trimmingCharacters(in: .whitespaces).lowercased() }
        guard !text.isEmpty, !names.contains(where: \.isEmpty) else {
            throw ConvoyError.invalidConfiguration("mesh order \"\(text)\" is not axis names joined by '-'; write e.g. \"tp-dp-pp\" (fastest-varying first)")
        }
        return names.map { MeshAxis(rawValue: $0) }
    }

    /// A dp × pp × tp mesh in the default order.
    ///
    /// - Throws: ``ConvoyTensor/ConvoyError/invalidConfiguration(_:)`` when an axis size is below 1.
    public init(dp: Int, pp: Int, tp: Int) throws {
        try self.init(sizes: [.dp: dp, .pp: pp, .tp: tp])
    }

    /// A dp × pp × tp mesh (default order) that must cover exactly `worldSize` ranks.
    ///
    /// - Throws: ``ConvoyTensor/ConvoyError/invalidConfiguration(_:)`` when an axis size is below 1 or when
    ///   `worldSize` is not dp·pp·tp.
    public init(dp: Int, pp: Int, tp: Int, worldSize: Int) throws {
        try self.init(dp: dp, pp: pp, tp: tp)
        try checkWorldSize(worldSize)
    }

    /// Number of ranks the mesh covers: the product of the axis sizes.
    public var size: Int { sizes.reduce(1, *) }

    /// The number of ranks along `axis` (1 for an axis the mesh does not name).
    public func size(of axis: MeshAxis) -> Int {
        axes.firstIndex(of: axis).map { sizes[$0] } ?? 1
    }

    /// Number of data-parallel replicas.
    public var dp: Int { size(of: .dp) }
    /// Number of pipeline stages.
    public var pp: Int { size(of: .pp) }
    /// Number of tensor-parallel ranks per layer.
    public var tp: Int { size(of: .tp) }

    /// The order as written in configuration (`"tp-dp-pp"`).
    public var orderDescription: String { axes.map(\.rawValue).joined(separator: "-") }

    public var description: String {
        "mesh " + zip(axes, sizes).map { "\($0)=\($1)" }.joined(separator: " ") + " (order \(orderDescription))"
    }

    /// Throws unless `worldSize` equals the mesh size, with a message telling the user what to change.
    public func checkWorldSize(_ worldSize: Int) throws {
        guard worldSize == size else {
            let product = zip(axes, sizes).map { "\($0) \($1)" }.joined(separator: " · ")
            throw ConvoyError.invalidConfiguration("world size \(worldSize) is not the mesh size \(product) = \(size); change --dp/--pp/--tp or the number of ranks")
        }
    }

    /// The stride of `axis` in the rank order (product of the sizes of faster axes).
    private func stride(of index: Int) -> Int { sizes[..<index].reduce(1, *) }

    /// The coordinate of world rank `rank` along `axis` (0 for an axis the mesh does not name).
    public func coordinate(of rank: Int, along axis: MeshAxis) -> Int {
        precondition(rank >= 0 && rank < size, "rank \(rank) is outside \(self) (ranks 0..<\(size))")
        guard let index = axes.firstIndex(of: axis) else { return 0 }
        return (rank / stride(of: index)) % sizes[index]
    }

    /// The mesh coordinates of world rank `rank` along the three strategy axes.
    public func coordinates(of rank: Int) -> (dp: Int, pp: Int, tp: Int) {
        (dp: coordinate(of: rank, along: .dp), pp: coordinate(of: rank, along: .pp), tp: coordinate(of: rank, along: .tp))
    }

    /// The world rank at `coordinates` (axes left out are at 0).
    public func rank(at coordinates: [MeshAxis: Int]) -> Int {
        var rank = 0
        for (index, axis) in axes.enumerated() {
            let position = coordinates[axis] ?? 0
            precondition(position >= 0 && position < sizes[index], "coordinate \(position) along \(axis) is outside \(self)")
            rank += position * stride(of: index)
        }
        return rank
    }

    /// The world rank at the given coordinates of the three strategy axes.
    public func rank(dp dpIndex: Int, pp ppIndex: Int, tp tpIndex: Int) -> Int {
        rank(at: [.dp: dpIndex, .pp: ppIndex, .tp: tpIndex])
    }

    /// The world ranks of the group along `axis` that contains `rank`, in axis order (position i holds the rank
    /// whose `axis` coordinate is i).
    public func ranksAlong(_ axis: MeshAxis, through rank: Int) -> [Int] {
        guard let index = axes.firstIndex(of: axis) else { return [rank] }
        let base = rank - coordinate(of: rank, along: axis) * stride(of: index)
        return (0..<sizes[index]).map { base + $0 * stride(of: index) }
    }

    /// Which group along `axis` holds `rank`: its rank in the mesh with `axis` removed (see the type's
    /// documentation), in 0 ..< size / size(of: axis).
    public func groupIndex(along axis: MeshAxis, of rank: Int) -> Int {
        var index = 0, stride = 1
        for (position, other) in axes.enumerated() where other != axis {
            index += coordinate(of: rank, along: other) * stride
            stride *= sizes[position]
        }
        return index
    }

    /// This rank's position along `axis` (its rank in that axis's group).
    public func position(along axis: MeshAxis, of rank: Int) -> Int { coordinate(of: rank, along: axis) }

    /// Every group along `axis`, ordered by ``groupIndex(along:of:)``, each listing its ranks in axis order: the
    /// one generator behind every axis's groups. Together they partition the world.
    public func groups(along axis: MeshAxis) -> [[Int]] {
        var groups = Array(repeating: [Int](), count: size / size(of: axis))
        for rank in 0..<size where coordinate(of: rank, along: axis) == 0 {
            groups[groupIndex(along: axis, of: rank)] = ranksAlong(axis, through: rank)
        }
        return groups
    }

    /// Collectively creates this rank's group along each axis of the mesh; every rank of `world` must call it.
    ///
    /// One `split(color:key:name:)` per axis, in the mesh's axis order, with colour = the group's index
    /// (``groupIndex(along:of:)``) and key = the rank's position along the axis, so group rank i is the rank at
    /// coordinate i. Each group is named after its axis. `world`'s ranks are the mesh's ranks.
    ///
    /// - Throws: ``ConvoyTensor/ConvoyError/invalidConfiguration(_:)`` when `world.size` is not the mesh size
    ///   (before any communication, so every rank fails the same way), or the backend's error from `split`.
    public func groups(of world: any ProcessGroup) throws -> MeshGroups {
        try checkWorldSize(world.size)
        var groups: [MeshAxis: any ProcessGroup] = [:]
        for axis in axes {
            let color = groupIndex(along: axis, of: world.rank)
            let key = position(along: axis, of: world.rank)
            guard let group = try world.split(color: color, key: key, name: axis.rawValue) else {
                throw CommunicationError.backend("split of group '\(world.name)' for mesh axis \(axis) (colour \(color)) returned no group for rank \(world.rank)")
            }
            groups[axis] = group
        }
        return MeshGroups(groups)
    }
}

/// One rank's groups along each axis of a ``DeviceMesh``.
public struct MeshGroups: Sendable {
    private let groups: [MeshAxis: any ProcessGroup]

    public init(_ groups: [MeshAxis: any ProcessGroup]) {
        self.groups = groups
    }

    public init(dp: any ProcessGroup, pp: any ProcessGroup, tp: any ProcessGroup) {
        self.init([.dp: dp, .pp: pp, .tp: tp])
    }

    /// The data-parallel group: the replicas of this rank's (stage, tensor shard).
    public var dp: any ProcessGroup { self[.dp] }
    /// The pipeline group: the stages of this rank's (replica, tensor shard).
    public var pp: any ProcessGroup { self[.pp] }
    /// The tensor-parallel group: the shards of this rank's (replica, stage).
    public var tp: any ProcessGroup { self[.tp] }

    /// The group along `axis` (every mesh has tp, dp and pp).
    public subscript(axis: MeshAxis) -> any ProcessGroup {
        guard let group = groups[axis] else { preconditionFailure("the mesh has no axis \(axis)") }
        return group
    }
}
