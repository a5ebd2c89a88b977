/// Embedding lookup with a scatter-add backward.
extension Tensor {
    /// Rows of `weight` ([vocabulary, width]) selected by `indices`; the result has shape `shape + [width]`.
    ///
    /// With `firstRow`, `weight` holds only rows `firstRow ..< firstRow + weight.shape[0]` of the table (a
    /// vocabulary shard): other indices give zero vectors and no gradient, so the shards' results sum to the
    /// whole lookup.
    public static func embedding(_ weight: Tensor, indices: [Int32], shape: [Int], firstRow: Int? = nil) -> Tensor {
        if firstRow == nil, let placed = PlacementDeduction.dispatch(.embedding(weight: weight, indices: indices, shape: shape)) { return placed }
        precondition(weight.rank == 2, "embedding weight must be [vocabulary, width], got \(weight.shape)")
        precondition(Shape.count(shape) == indices.count, "embedding: \(indices.count) indices do not fill shape \(shape)")
        let vocabulary = weight.shape[0], width = weight.shape[1]
        let first = firstRow ?? 0
        if firstRow == nil {
            for index in indices where index < 0 || Int(index) >= vocabulary {
                preconditionFailure("embedding index \(index) is outside the vocabulary 0..<\(vocabulary)")
            }
        }
        // Local row of each index, or −1 where another shard holds it.
        let rows = indices.map { index -> Int in
            let row = Int(index) - first
            return row >= 0 && row < vocabulary ? row : -1
        }
        let table = weight.contiguous()
        let result = Tensor(uninitializedShape: shape + [width])
        let wp = table.floatPointer, out = result.floatPointer
        rows.withUnsafeBufferPointer { ids in
            ComputePool.current.parallelFor(ids.count, minimumChunk: 64) { range in
                for i in range {
                    if ids[i] < 0 { (out + i * width).update(repeating: 0, count: width) } else { (out + i * width).update(from: wp + ids[i] * width, count: width) }
                }
            }
        }
        return record(result, operation: "embedding", inputs: [weight]) { gradient in
            let contiguousGradient = gradient.contiguous()
            defer { withExtendedLifetime(contiguousGradient) {} }
            let g = contiguousGradient.floatPointer
            let dWeight = Tensor.zeros([vocabulary, width])
            let dw = dWeight.floatPointer
            // Columns are split across threads so no two threads add into the same element.
            rows.withUnsafeBufferPointer { ids in
                ComputePool.current.parallelFor(width, minimumChunk: 32) { columns in
                    for i in 0..<ids.count where ids[i] >= 0 {
                        let source = g + i * width, destination = dw + ids[i] * width
                        for c in columns { destination[c] += source[c] }
                    }
                }
            }
            return [dWeight]
        }
    }
}
