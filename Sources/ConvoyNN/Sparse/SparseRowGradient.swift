import ConvoyTensor

/// The gradient of an embedding table as rows + values: `values[i]` is the gradient of row `rows[i]` (rows
/// distinct). What a batch's backward produces for a table that lives elsewhere (a parameter server): the
/// batch touches `rows.count` rows, and nothing of size [rows of the table, width] is ever allocated.
public struct SparseRowGradient {
    /// Table row ids, distinct, ascending.
    public var rows: [Int32]
    /// [rows.count, width].
    public var values: Tensor

    public init(rows: [Int32], values: Tensor) {
        precondition(values.rank == 2 && values.shape[0] == rows.count, "a sparse gradient needs one value row per id: \(rows.count) ids, values \(values.shape)")
        self.rows = rows
        self.values = values
    }

    public var width: Int { values.shape[1] }
}
