/// An n-dimensional box of a tensor: the elements whose index lies in `offsets[d] ..< offsets[d] + shape[d]`
/// along every dimension d. Every piece a sharded checkpoint stores, and every region a rank needs, is a box
/// (or a list of boxes): a tensor-parallel shard is one box; a ZeRO shard, a flat range of the row-major
/// tensor, is the few boxes ``boxes(coveringFlat:of:)`` cuts it into. A box's elements are stored row-major.
public struct TensorBox: Codable, Equatable, Hashable, Sendable, CustomStringConvertible {
    public var offsets: [Int]
    public var shape: [Int]

    public init(offsets: [Int], shape: [Int]) {
        precondition(offsets.count == shape.count, "a box needs one offset per dimension")
        self.offsets = offsets
        self.shape = shape
    }

    /// The whole of a tensor of shape `shape`.
    public init(whole shape: [Int]) { self.init(offsets: shape.map { _ in 0 }, shape: shape) }

    /// Number of elements.
    public var count: Int { shape.reduce(1, *) }

    public var description: String {
        "[" + zip(offsets, shape).map { "\($0)..<\($0 + $1)" }.joined(separator: ", ") + "]"
    }

    /// Whether the box lies inside a tensor of shape `tensorShape`.
    public func isInside(_ tensorShape: [Int]) -> Bool {
        offsets.count == tensorShape.count && zip(zip(offsets, shape), tensorShape).allSatisfy { $0.0 >= 0 && $0.1 >= 0 && $0.0 + $0.1 <= $1 }
    }

    /// The elements both boxes hold, or nil when they share none.
    public func intersection(_ other: TensorBox) -> TensorBox? {
        guard other.offsets.count == offsets.count else { return nil }
        var lower: [Int] = [], extent: [Int] = []
        for d in offsets.indices {
            let low = max(offsets[d], other.offsets[d]), high = min(offsets[d] + shape[d], other.offsets[d] + other.shape[d])
            guard low < high else { return nil }
            lower.append(low)
            extent.append(high - low)
        }
        return TensorBox(offsets: lower, shape: extent)
    }

    /// The boxes, in row-major order, that together hold exactly the elements `range` of the row-major
    /// flattening of a tensor of shape `shape` — at most 2·rank − 1 of them. Their elements, each box
    /// row-major and the boxes one after the other, are the range's elements in order, so a flat slice's data
    /// is the boxes' data without any copy.
    public static func boxes(coveringFlat range: Range<Int>, of shape: [Int]) -> [TensorBox] {
        guard !range.isEmpty else { return [] }
        guard let outer = shape.first else { return [TensorBox(offsets: [], shape: [])] }
        let inner = shape.dropFirst().reduce(1, *)
        let rest = Array(shape.dropFirst())
        func within(row: Int, _ part: Range<Int>) -> [TensorBox] {
            boxes(coveringFlat: part, of: rest).map { TensorBox(offsets: [row] + $0.offsets, shape: [1] + $0.shape) }
        }
        precondition(range.lowerBound >= 0 && range.upperBound <= outer * inner, "flat range \(range) outside a tensor of shape \(shape)")
        var firstRow = range.lowerBound / inner
        let endRow = range.upperBound / inner
        if firstRow == (range.upperBound - 1) / inner && range.count < inner {
            return within(row: firstRow, (range.lowerBound - firstRow * inner)..<(range.upperBound - firstRow * inner))
        }
        var result: [TensorBox] = []
        if range.lowerBound % inner != 0 {
            result += within(row: firstRow, (range.lowerBound % inner)..<inner)
            firstRow += 1
        }
        if endRow > firstRow {
            result.append(TensorBox(offsets: [firstRow] + rest.map { _ in 0 }, shape: [endRow - firstRow] + rest))
        }
        if range.upperBound % inner != 0 { result += within(row: endRow, 0..<(range.upperBound % inner)) }
        return result
    }

    /// Calls `body(sourceStart, destinationStart, length)` for each run of consecutive elements of
    /// `region` (inside both boxes), in row-major order: `sourceStart` counts elements from the start of this
    /// box's row-major data, `destinationStart` from the start of `destination`'s.
    public func forEachRun(of region: TensorBox, into destination: TensorBox, _ body: (Int, Int, Int) -> Void) {
        let rank = shape.count
        guard rank > 0 else { body(0, 0, 1); return }
        guard region.count > 0 else { return }
        func stridesOf(_ extent: [Int]) -> [Int] {
            var strides = [Int](repeating: 1, count: extent.count)
            for d in stride(from: extent.count - 2, through: 0, by: -1) { strides[d] = strides[d + 1] * extent[d + 1] }
            return strides
        }
        let sourceStrides = stridesOf(shape), destinationStrides = stridesOf(destination.shape)
        let run = region.shape[rank - 1]
        var index = [Int](repeating: 0, count: rank)  // position within `region`
        while true {
            var source = 0, target = 0
            for d in 0..<rank {
                let global = region.offsets[d] + index[d]
                source += (global - offsets[d]) * sourceStrides[d]
                target += (global - destination.offsets[d]) * destinationStrides[d]
            }
            body(source, target, run)
            var d = rank - 2
            while d >= 0 {
                index[d] += 1
                if index[d] < region.shape[d] { break }
                index[d] = 0
                d -= 1
            }
            if d < 0 { return }
        }
    }
}
