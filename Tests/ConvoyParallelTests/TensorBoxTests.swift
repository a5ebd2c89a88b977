import ConvoyParallel
import ConvoyTensor
import Testing

/// The box arithmetic sharded checkpoints rest on, against brute force over every element.
@Suite struct TensorBoxTests {
    /// The row-major flat indices of `box`'s elements in a tensor of shape `shape`, in the box's row-major order.
    func flatIndices(of box: TensorBox, in shape: [Int]) -> [Int] {
        var result: [Int] = []
        func visit(_ dimension: Int, _ prefix: Int) {
            if dimension == shape.count { result.append(prefix); return }
            for i in box.offsets[dimension]..<(box.offsets[dimension] + box.shape[dimension]) { visit(dimension + 1, prefix * shape[dimension] + i) }
        }
        visit(0, 0)
        return result
    }

    /// 500 random shapes (rank 0–4) and flat ranges: the boxes hold exactly the range's elements, in order, and
    /// there are at most 2·rank − 1 of them.
    @Test func flatRangesBecomeBoxesInRowMajorOrder() {
        var generator = SystemRandomNumberGenerator()
        for _ in 0..<500 {
            let rank = Int.random(in: 0...4, using: &generator)
            let shape = (0..<rank).map { _ in Int.random(in: 1...5, using: &generator) }
            let count = shape.reduce(1, *)
            let lower = Int.random(in: 0..<count, using: &generator), upper = Int.random(in: (lower + 1)...count, using: &generator)
            let boxes = TensorBox.boxes(coveringFlat: lower..<upper, of: shape)
            #expect(boxes.flatMap { flatIndices(of: $0, in: shape) } == Array(lower..<upper), "shape \(shape) range \(lower)..<\(upper): \(boxes)")
            #expect(boxes.count <= max(2 * rank - 1, 1))
            #expect(boxes.allSatisfy { $0.isInside(shape) })
        }
    }

    /// Random box pairs: the intersection is what both hold, and the runs copy exactly those elements between
    /// the two boxes' row-major layouts.
    @Test func intersectionsAndRunsMatchBruteForce() {
        var generator = SystemRandomNumberGenerator()
        for _ in 0..<300 {
            let rank = Int.random(in: 1...3, using: &generator)
            let shape = (0..<rank).map { _ in Int.random(in: 1...6, using: &generator) }
            func randomBox() -> TensorBox {
                var offsets: [Int] = [], extent: [Int] = []
                for size in shape {
                    let low = Int.random(in: 0..<size, using: &generator)
                    offsets.append(low)
                    extent.append(Int.random(in: 1...(size - low), using: &generator))
                }
                return TensorBox(offsets: offsets, shape: extent)
            }
            let stored = randomBox(), needed = randomBox()
            let both = Set(flatIndices(of: stored, in: shape)).intersection(flatIndices(of: needed, in: shape))
            guard let region = stored.intersection(needed) else {
                #expect(both.isEmpty)
                continue
            }
            #expect(Set(flatIndices(of: region, in: shape)) == both)
            // Copy the stored box's elements (their global flat indices) into the needed box's layout.
            let source = flatIndices(of: stored, in: shape)
            var target = [Int](repeating: -1, count: needed.count)
            stored.forEachRun(of: region, into: needed) { from, to, length in
                for i in 0..<length { target[to + i] = source[from + i] }
            }
            let expected = flatIndices(of: needed, in: shape).map { both.contains($0) ? $0 : -1 }
            #expect(target == expected, "stored \(stored) needed \(needed) in \(shape)")
        }
    }
}
