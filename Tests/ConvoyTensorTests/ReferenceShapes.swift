/// Double-precision references for broadcasting and reductions, written as plain index arithmetic.
extension Reference {
    /// The multi-index of a row-major flat index.
    static func multiIndex(_ flat: Int, shape: [Int]) -> [Int] {
        var remaining = flat
        var index = [Int](repeating: 0, count: shape.count)
        for axis in stride(from: shape.count - 1, through: 0, by: -1) {
            index[axis] = remaining % shape[axis]
            remaining /= shape[axis]
        }
        return index
    }

    /// The flat index of a multi-index.
    static func flatIndex(_ index: [Int], shape: [Int]) -> Int {
        var flat = 0
        for (coordinate, extent) in zip(index, shape) { flat = flat * extent + coordinate }
        return flat
    }

    /// The NumPy broadcast shape of two shapes.
    static func broadcastShape(_ a: [Int], _ b: [Int]) -> [Int] {
        let rank = max(a.count, b.count)
        let pa = [Int](repeating: 1, count: rank - a.count) + a
        let pb = [Int](repeating: 1, count: rank - b.count) + b
        return zip(pa, pb).map { max($0, $1) }
    }

    /// Index into an input of `inputShape` that output element `flat` of `outputShape` reads under broadcasting.
    static func broadcastSource(_ flat: Int, outputShape: [Int], inputShape: [Int]) -> Int {
        let index = multiIndex(flat, shape: outputShape)
        let lead = outputShape.count - inputShape.count
        var source = 0
        for (i, extent) in inputShape.enumerated() { source = source * extent + (extent == 1 ? 0 : index[lead + i]) }
        return source
    }

    /// f(a, b) elementwise under NumPy broadcasting.
    static func broadcastBinary(_ a: [Double], _ aShape: [Int], _ b: [Double], _ bShape: [Int], _ f: (Double, Double) -> Double) -> (values: [Double], shape: [Int]) {
        let shape = broadcastShape(aShape, bShape)
        let count = shape.reduce(1, *)
        let values = (0..<count).map { i in
            f(a[broadcastSource(i, outputShape: shape, inputShape: aShape)], b[broadcastSource(i, outputShape: shape, inputShape: bShape)])
        }
        return (values, shape)
    }

    /// Reduction over `axes` (nil: all) with `combine`, starting from `initial`.
    static func reduce(
        _ x: [Double], shape: [Int], axes: [Int]?, keepingDimensions: Bool, initial: Double, _ combine: (Double, Double) -> Double
    ) -> (values: [Double], shape: [Int]) {
        let rank = shape.count
        let reduced = Set((axes ?? Array(0..<rank)).map { $0 < 0 ? $0 + rank : $0 })
        let keptShape = shape.enumerated().map { reduced.contains($0.offset) ? 1 : $0.element }
        var values = [Double](repeating: initial, count: keptShape.reduce(1, *))
        for flat in 0..<x.count {
            var index = multiIndex(flat, shape: shape)
            for axis in reduced { index[axis] = 0 }
            let target = flatIndex(index, shape: keptShape)
            values[target] = combine(values[target], x[flat])
        }
        let outputShape = keepingDimensions ? keptShape : shape.enumerated().filter { !reduced.contains($0.offset) }.map(\.element)
        return (values, outputShape)
    }

    /// Applies a permutation of axes: result axis i is input axis `axes[i]`.
    static func permute(_ x: [Double], shape: [Int], axes: [Int]) -> [Double] {
        let resultShape = axes.map { shape[$0] }
        return (0..<x.count).map { flat in
            let index = multiIndex(flat, shape: resultShape)
            var source = [Int](repeating: 0, count: shape.count)
            for (i, axis) in axes.enumerated() { source[axis] = index[i] }
            return x[flatIndex(source, shape: shape)]
        }
    }
}
