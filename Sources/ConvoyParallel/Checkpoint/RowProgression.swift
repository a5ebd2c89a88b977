/// The rows a row-strided checkpoint piece holds, or a parameter server's shard of a table: `first`,
/// `first + stride`, … (`count` rows). A plain box is the progression of stride 1 over its rows.
///
/// A table sharded over S servers by id modulo S is not a box of the table: server s holds rows s, s + S, …
/// A sharded checkpoint stores that shard as one piece whose rows are this progression (``CheckpointIndex/Piece/rowStride``),
/// so no server has to fetch rows from another to save, and any reader (another S, one process) takes the rows it
/// needs from every piece.
public struct RowProgression: Equatable, Sendable {
    public var first: Int
    public var stride: Int
    public var count: Int

    public init(first: Int, stride: Int, count: Int) {
        precondition(stride >= 1 && count >= 0, "a row progression needs stride ≥ 1 and count ≥ 0")
        self.first = first
        self.stride = stride
        self.count = count
    }

    /// The rows id ≡ `residue` (mod `stride`) of a table of `rows` rows: a server's shard.
    public init(residue: Int, stride: Int, rows: Int) {
        self.init(first: residue, stride: stride, count: rows > residue ? (rows - residue + stride - 1) / stride : 0)
    }

    /// The i-th row.
    public func row(_ i: Int) -> Int { first + i * stride }

    /// The last row + 1 (`first` when empty).
    public var end: Int { count == 0 ? first : row(count - 1) + 1 }

    /// The positions i whose row lies in `rows`.
    public func positions(in rows: Range<Int>) -> Range<Int> {
        guard count > 0 else { return 0..<0 }
        let low = rows.lowerBound <= first ? 0 : (rows.lowerBound - first + stride - 1) / stride
        let high = rows.upperBound <= first ? 0 : min(count, (rows.upperBound - first + stride - 1) / stride)
        return low..<max(low, high)
    }

    /// The position of `row`, or nil when the progression does not hold it.
    public func position(of row: Int) -> Int? {
        guard row >= first, (row - first) % stride == 0 else { return nil }
        let i = (row - first) / stride
        return i < count ? i : nil
    }

    /// Whether the two progressions share a row (walks the shorter one over the common span).
    public func intersects(_ other: RowProgression) -> Bool {
        let low = max(first, other.first), high = min(end, other.end)
        guard count > 0, other.count > 0, low < high else { return false }
        let span = low..<high
        if stride == other.stride {
            return (first - other.first) % stride == 0 && !positions(in: span).isEmpty
        }
        let (walked, tested) = positions(in: span).count <= other.positions(in: span).count ? (self, other) : (other, self)
        return walked.positions(in: span).contains { tested.position(of: walked.row($0)) != nil }
    }
}
