/// Embedding lookup with a scatter-add backward.
extension Tensor {
    /// Rows of `weight` ([vocabulary, width]) selected by `indices`; the result has shape `shape + [width]`.
    public static func embedding(_ weight: Tensor, indices: [Int32], shape: [Int]) -> Tensor {
        precondition(weight.rank == 2, "embedding weight must be [vocabulary, width], got \(weight.shape)")
        precondition(Shape.count(shape) == indices.count, "embedding: \(indices.count) indices do not fill shape \(shape)")
        let vocabulary = weight.shape[0], width = weight.shape[1]
        for index in indices where index < 0 || Int(index) >= vocabulary {
            preconditionFailure("embedding index \(index) is outside the vocabulary 0..<\(vocabulary)")
        }
        let table = weight.contiguous()
        let result = Tensor(uninitializedShape: shape + [width])
        let wp = table.floatPointer, out = result.floatPointer
        indices.withUnsafeBufferPointer { ids in
            ComputePool.current.parallelFor(ids.count, minimumChunk: 64) { range in
                for i in range { (out + i * width).update(from: wp + Int(ids[i]) * width, count: width) }
            }
        }
        return record(result, operation: "embedding", inputs: [weight]) { gradient in
            let contiguousGradient = gradient.contiguous()
            defer { withExtendedLifetime(contiguousGradient) {} }
            let g = contiguousGradient.floatPointer
            let dWeight = Tensor.zeros([vocabulary, width])
            let dw = dWeight.floatPointer
            // Columns are split across threads so no two threads add into the same element.
            indices.withUnsafeBufferPointer { ids in
                ComputePool.current.parallelFor(width, minimumChunk: 32) { columns in
                    for i in 0..<ids.count {
                        let source = g + i * width, destination = dw + Int(ids[i]) * width
                        for c in columns { destination[c] += source[c] }
                    }
                }
            }
            return [dWeight]
        }
    }
}
