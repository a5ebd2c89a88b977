/// How a tensor's values are laid out along one axis of a device mesh: DTensor's placements, Hetu's
/// duplicate / split / partial states.
public enum Placement: Hashable, Sendable, CustomStringConvertible {
    /// Every rank along the axis holds the whole tensor (the same values).
    case replicate
    /// Each rank along the axis holds one contiguous piece of dimension `dim`.
    case shard(dim: Int)
    /// Each rank holds a partial value; the tensor is the sum over the axis.
    case partial

    public var description: String {
        switch self {
        case .replicate: return "Replicate"
        case .shard(let dim): return "Shard(\(dim))"
        case .partial: return "Partial"
        }
    }
}

/// Where a parameter lives on the mesh: one ``Placement`` per mesh axis (an axis not listed is
/// ``Placement/replicate``), and whether the same weight is also held elsewhere (a tied weight held by two
/// pipeline stages).
///
/// Data parallelism and ZeRO average, over the dp axis, every parameter that is replicated there, whatever its
/// placement along other axes (a tensor-parallel shard is still replicated across its data-parallel group).
/// Norms, checkpoints and parameter counts count each element once over the whole mesh: a rank counts a
/// parameter only at position 0 of every axis along which it is replicated, and only at its primary holder when
/// it is shared.
public struct TensorPlacement: Hashable, Sendable, CustomStringConvertible {
    /// The placement along each named mesh axis (`"dp"`, `"tp"`, …); absent axes replicate.
    public var axes: [String: Placement]
    /// A name shared by every copy of one weight held at several places (e.g. `"tied:wte"`), or nil.
    public var sharedAs: String?
    /// Of the copies of a shared weight, the one that counts it (norms, checkpoints); true when not shared.
    public var isPrimaryCopy: Bool

    /// Replicated along every axis, not shared.
    public init(_ axes: [String: Placement] = [:], sharedAs: String? = nil, isPrimaryCopy: Bool = true) {
        self.axes = axes
        self.sharedAs = sharedAs
        self.isPrimaryCopy = isPrimaryCopy
    }

    /// The placement along `axis`.
    public func along(_ axis: String) -> Placement { axes[axis] ?? .replicate }

    /// Whether a rank at `coordinates` (axis name → position along it) counts this tensor's elements when each
    /// element must be counted once over the mesh: it is the primary copy, and at position 0 of every axis the
    /// tensor is replicated along. `replicatedAxes` overrides the placement for axes whose values a strategy has
    /// made replicated or sharded (e.g. ZeRO's gradient shards along dp).
    public func countsOnce(at coordinates: [String: Int], overriding overrides: [String: Placement] = [:]) -> Bool {
        guard isPrimaryCopy else { return false }
        for (axis, position) in coordinates where position != 0 {
            if (overrides[axis] ?? along(axis)) == .replicate { return false }
        }
        return true
    }

    public var description: String {
        let listed = axes.keys.sorted().map { "\($0): \(axes[$0]!)" }
        var text = listed.isEmpty ? "Replicate everywhere" : listed.joined(separator: ", ")
        if let sharedAs { text += "; shared as \(sharedAs)\(isPrimaryCopy ? " (primary)" : "")" }
        return text
    }
}
