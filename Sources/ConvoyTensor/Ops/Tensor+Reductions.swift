/// Sum, mean and max over any set of axes.
extension Tensor {
    /// The reduced axes (sorted, deduplicated), the kept shape and the number of elements reduced per output.
    private func reductionAxes(_ axes: [Int]) -> (axes: [Int], keptShape: [Int], reducedCount: Int) {
        let normalized = Array(Set(axes.map { Shape.normalizedAxis($0, rank: rank) })).sorted()
        let kept = (0..<rank).filter { !normalized.contains($0) }
        return (normalized, kept.map { shape[$0] }, normalized.reduce(1) { $0 * shape[$1] })
    }

    /// The elements with the reduced axes moved last, contiguous: one output per row.
    private func rowsToReduce(_ axes: [Int]) -> Tensor {
        let kept = (0..<rank).filter { !axes.contains($0) }
        return withNoGrad { (kept + axes == Array(0..<rank) ? self : permuted(kept + axes)).contiguous() }
    }

    private func reducedShape(_ axes: [Int], keepingDimensions: Bool) -> [Int] {
        keepingDimensions ? shape.enumerated().map { axes.contains($0.offset) ? 1 : $0.element } : shape.enumerated().filter { !axes.contains($0.offset) }.map(\.element)
    }

    /// Sum over `axes` (all axes when nil).
    public func sum(axes: [Int]? = nil, keepingDimensions: Bool = false) -> Tensor {
        let layout = reductionAxes(axes ?? Array(0..<rank))
        let outputShape = reducedShape(layout.axes, keepingDimensions: keepingDimensions)
        let result = Tensor(uninitializedShape: outputShape)
        let rows = Shape.count(layout.keptShape), length = layout.reducedCount
        let output = result.floatPointer
        if layout.axes.first == 0 && layout.axes == Array(0..<layout.axes.count) && layout.axes.count < rank {
            // Reducing leading axes of a contiguous tensor: add rows of the original layout (vectorised).
            let contiguousSelf = withNoGrad { contiguous() }
            defer { withExtendedLifetime(contiguousSelf) {} }
            let source = contiguousSelf.floatPointer
            let width = rows
            ComputePool.current.parallelFor(width, minimumChunk: 256) { columns in
                let out = output + columns.lowerBound, w = columns.count
                out.update(repeating: 0, count: w)
                for r in 0..<length {
                    let row = source + r * width + columns.lowerBound
                    var j = 0
                    while j + 8 <= w { VectorMath.store(VectorMath.load(out + j) + VectorMath.load(row + j), out + j); j += 8 }
                    while j < w { out[j] += row[j]; j += 1 }
                }
            }
        } else {
            let data = rowsToReduce(layout.axes)
            defer { withExtendedLifetime(data) {} }
            let input = data.floatPointer
            ComputePool.current.parallelFor(rows, minimumChunk: Swift.max(1, 8192 / Swift.max(length, 1))) { range in
                for r in range { output[r] = VectorMath.sum(input + r * length, length) }
            }
        }
        let inputShape = shape
        let keptShape = reducedShape(layout.axes, keepingDimensions: true)
        return Tensor.record(result, operation: "sum", inputs: [self]) { gradient in
            [gradient.reshaped(keptShape).broadcast(to: inputShape).contiguous()]
        }
    }

    /// Mean over `axes` (all axes when nil).
    public func mean(axes: [Int]? = nil, keepingDimensions: Bool = false) -> Tensor {
        let normalized = (axes ?? Array(0..<rank)).map { Shape.normalizedAxis($0, rank: rank) }
        let extent = Set(normalized).reduce(1) { $0 * shape[$1] }
        return sum(axes: axes, keepingDimensions: keepingDimensions) * (1 / Float(Swift.max(extent, 1)))
    }

    /// Maximum over `axes` (all axes when nil). The gradient goes to the first maximal element.
    public func max(axes: [Int]? = nil, keepingDimensions: Bool = false) -> Tensor {
        let layout = reductionAxes(axes ?? Array(0..<rank))
        let result = Tensor(uninitializedShape: reducedShape(layout.axes, keepingDimensions: keepingDimensions))
        let rows = Shape.count(layout.keptShape), length = layout.reducedCount
        precondition(length > 0, "max over an empty axis")
        let data = rowsToReduce(layout.axes)
        defer { withExtendedLifetime(data) {} }
        let input = data.floatPointer, output = result.floatPointer
        var argmax = [Int](repeating: 0, count: rows)
        for r in 0..<rows {
            let row = input + r * length
            var best = 0
            for j in 1..<length where row[j] > row[best] { best = j }
            argmax[r] = best
            output[r] = row[best]
        }
        let permutedShape = layout.keptShape + layout.axes.map { shape[$0] }
        let kept = (0..<rank).filter { !layout.axes.contains($0) }
        let order = kept + layout.axes
        var inverse = [Int](repeating: 0, count: rank)
        for (i, axis) in order.enumerated() { inverse[axis] = i }
        return Tensor.record(result, operation: "max", inputs: [self]) { gradient in
            let contiguousGradient = gradient.contiguous()
            defer { withExtendedLifetime(contiguousGradient) {} }
            let g = contiguousGradient.floatPointer
            let scattered = Tensor.zeros(permutedShape)
            let s = scattered.floatPointer
            for r in 0..<rows { s[r * length + argmax[r]] = g[r] }
            return [scattered.reshaped(permutedShape).permuted(inverse).contiguous()]
        }
    }
}
