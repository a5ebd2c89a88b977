import ConvoyTensor

/// One table's part of a batch: the distinct ids it touches (ascending) and, for every position of the batch,
/// which of them it reads. Workers pull only `uniqueIDs` and push one gradient row per unique id.
public struct SparseLookup: Sendable, Equatable {
    public let uniqueIDs: [Int32]
    /// For each batch position, the index into `uniqueIDs`.
    public let positions: [Int32]

    public init(ids: [Int32]) {
        let unique = Array(Set(ids)).sorted()
        var index: [Int32: Int32] = [:]
        index.reserveCapacity(unique.count)
        for (i, id) in unique.enumerated() { index[id] = Int32(i) }
        uniqueIDs = unique
        positions = ids.map { index[$0]! }
    }

    /// The batch's vectors [batch, width] from the pulled rows [uniqueIDs.count, width]; backward gives `rows`
    /// a gradient of the same [unique, width] shape — the values of a ``SparseRowGradient``.
    public func gather(_ rows: Tensor) -> Tensor {
        Tensor.embedding(rows, indices: positions, shape: [positions.count])
    }
}
