import ConvoyTensor

/// The shared-memory kernels of the Local backend: reduce a range of several ranks' buffers and write the
/// result to one or more destinations, block by block so each block is read once from every source and
/// written while still in cache.
enum BufferReduction {
    /// Elements per block: sources and destinations of one block stay in L1/L2.
    static let blockElements = 8192

    /// For every element i in `range`: result = op(sources[0][i], …, sources[n−1][i]); written to every
    /// destination at i. Sources and destinations may alias (in-place all-reduce).
    static func reduce(
        sources: [UnsafeMutableRawPointer], destinations: [UnsafeMutableRawPointer], destinationOffset: Int = 0,
        range: Range<Int>, dtype: DType, operation: ReduceOperation, groupSize: Int, scratch: UnsafeMutablePointer<Float>
    ) {
        var start = range.lowerBound
        while start < range.upperBound {
            let count = Swift.min(blockElements, range.upperBound - start)
            switch dtype {
            case .float32:
                accumulate(sources.map { $0.assumingMemoryBound(to: Float.self) + start }, into: scratch, count: count, operation: operation, groupSize: groupSize)
                for destination in destinations {
                    (destination.assumingMemoryBound(to: Float.self) + start - range.lowerBound + destinationOffset).update(from: scratch, count: count)
                }
            case .bfloat16:
                // Widen each source block to Float32, reduce in Float32, round once to BFloat16.
                let widened = scratch + blockElements
                var first = true
                for source in sources {
                    // The SIMD conversions (no pool: a block is small, and ranks reduce their ranges concurrently).
                    BFloat16.widen(source.assumingMemoryBound(to: BFloat16.self) + start, to: widened, count: count, pool: nil)
                    if first { scratch.update(from: widened, count: count); first = false } else { combine(scratch, widened, count: count, operation: operation) }
                }
                if operation == .average { scale(scratch, count: count, by: 1 / Float(groupSize)) }
                for destination in destinations {
                    BFloat16.round(scratch, to: destination.assumingMemoryBound(to: BFloat16.self) + start - range.lowerBound + destinationOffset, count: count, pool: nil)
                }
            }
            start += count
        }
    }

    @inline(__always)
    private static func accumulate(_ sources: [UnsafeMutablePointer<Float>], into output: UnsafeMutablePointer<Float>, count: Int, operation: ReduceOperation, groupSize: Int) {
        output.update(from: sources[0], count: count)
        for source in sources.dropFirst() { combine(output, source, count: count, operation: operation) }
        if operation == .average { scale(output, count: count, by: 1 / Float(groupSize)) }
    }

    @inline(__always)
    private static func combine(_ output: UnsafeMutablePointer<Float>, _ input: UnsafeMutablePointer<Float>, count: Int, operation: ReduceOperation) {
        var i = 0
        switch operation {
        case .sum, .average:
            while i + 8 <= count { VectorMath.store(VectorMath.load(output + i) + VectorMath.load(input + i), output + i); i += 8 }
            while i < count { output[i] += input[i]; i += 1 }
        case .max:
            while i + 8 <= count {
                let a = VectorMath.load(output + i), b = VectorMath.load(input + i)
                VectorMath.store(a.replacing(with: b, where: b .> a), output + i)
                i += 8
            }
            while i < count { output[i] = Swift.max(output[i], input[i]); i += 1 }
        case .min:
            while i + 8 <= count {
                let a = VectorMath.load(output + i), b = VectorMath.load(input + i)
                VectorMath.store(a.replacing(with: b, where: b .< a), output + i)
                i += 8
            }
            while i < count { output[i] = Swift.min(output[i], input[i]); i += 1 }
        }
    }

    @inline(__always)
    private static func scale(_ output: UnsafeMutablePointer<Float>, count: Int, by factor: Float) {
        let v = VectorMath.Vector(repeating: factor)
        var i = 0
        while i + 8 <= count { VectorMath.store(VectorMath.load(output + i) * v, output + i); i += 8 }
        while i < count { output[i] *= factor; i += 1 }
    }
}
