/// Shape arithmetic shared by the tensor kernels.
public enum Shape {
    /// Number of elements of a shape (1 for a scalar).
    @inlinable
    public static func count(_ shape: [Int]) -> Int { shape.reduce(1, *) }

    /// Row-major (C-order) strides of a shape.
    public static func contiguousStrides(_ shape: [Int]) -> [Int] {
        var strides = [Int](repeating: 1, count: shape.count)
        var running = 1
        for axis in stride(from: shape.count - 1, through: 0, by: -1) {
            strides[axis] = running
            running *= shape[axis]
        }
        return strides
    }

    /// The NumPy broadcast of two shapes, or nil when they are incompatible.
    public static func broadcast(_ a: [Int], _ b: [Int]) -> [Int]? {
        let rank = max(a.count, b.count)
        var result = [Int](repeating: 1, count: rank)
        for i in 0..<rank {
            let da = i < rank - a.count ? 1 : a[i - (rank - a.count)]
            let db = i < rank - b.count ? 1 : b[i - (rank - b.count)]
            if da == db || db == 1 { result[i] = da } else if da == 1 { result[i] = db } else { return nil }
        }
        return result
    }

    /// Normalises a possibly negative axis against a rank.
    public static func normalizedAxis(_ axis: Int, rank: Int) -> Int {
        let normalized = axis < 0 ? axis + rank : axis
        precondition(normalized >= 0 && normalized < max(rank, 1), "axis \(axis) is out of range for a tensor of rank \(rank)")
        return normalized
    }
}

/// Walks the element offsets of a strided view in row-major order, handing out whole innermost rows,
/// so kernels over non-contiguous tensors run a tight loop per row.
struct StridedRows {
    let shape: [Int]
    let strides: [Int]
    let baseOffset: Int

    /// Calls `body(offsetOfRowStart, rowIndex)` for every innermost row; rows have `shape.last` elements
    /// spaced by `strides.last`.
    func forEachRow(_ body: (Int, Int) -> Void) {
        let rank = shape.count
        if rank <= 1 { body(baseOffset, 0); return }
        let outerRank = rank - 1
        let rows = Shape.count(Array(shape[0..<outerRank]))
        if rows == 0 { return }
        var index = [Int](repeating: 0, count: outerRank)
        var offset = baseOffset
        for row in 0..<rows {
            body(offset, row)
            var axis = outerRank - 1
            while axis >= 0 {
                index[axis] += 1
                offset += strides[axis]
                if index[axis] < shape[axis] { break }
                offset -= strides[axis] * shape[axis]
                index[axis] = 0
                axis -= 1
            }
        }
    }
}
