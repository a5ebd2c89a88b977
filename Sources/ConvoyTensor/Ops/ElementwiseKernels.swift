/// Parallel SIMD loops shared by the elementwise operations. Closures are `@inline(__always)` so each use
/// compiles to its own vector loop.
enum ElementwiseKernels {
    typealias Vector = VectorMath.Vector
    /// Elements per parallel chunk: below this a dispatch costs more than it saves.
    static let minimumChunk = 1 << 14

    @inline(__always)
    static func map(
        _ input: UnsafePointer<Float>, _ output: UnsafeMutablePointer<Float>, count: Int,
        _ vector: (Vector) -> Vector, _ scalar: (Float) -> Float
    ) {
        ComputePool.current.parallelFor(count, minimumChunk: minimumChunk) { range in
            var i = range.lowerBound
            while i + 8 <= range.upperBound {
                VectorMath.store(vector(VectorMath.load(input + i)), output + i)
                i += 8
            }
            while i < range.upperBound { output[i] = scalar(input[i]); i += 1 }
        }
    }

    @inline(__always)
    static func zip(
        _ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ output: UnsafeMutablePointer<Float>, count: Int,
        _ vector: (Vector, Vector) -> Vector, _ scalar: (Float, Float) -> Float
    ) {
        ComputePool.current.parallelFor(count, minimumChunk: minimumChunk) { range in
            var i = range.lowerBound
            while i + 8 <= range.upperBound {
                VectorMath.store(vector(VectorMath.load(a + i), VectorMath.load(b + i)), output + i)
                i += 8
            }
            while i < range.upperBound { output[i] = scalar(a[i], b[i]); i += 1 }
        }
    }

    @inline(__always)
    static func zip3(
        _ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ c: UnsafePointer<Float>,
        _ output: UnsafeMutablePointer<Float>, count: Int,
        _ vector: (Vector, Vector, Vector) -> Vector, _ scalar: (Float, Float, Float) -> Float
    ) {
        ComputePool.current.parallelFor(count, minimumChunk: minimumChunk) { range in
            var i = range.lowerBound
            while i + 8 <= range.upperBound {
                VectorMath.store(vector(VectorMath.load(a + i), VectorMath.load(b + i), VectorMath.load(c + i)), output + i)
                i += 8
            }
            while i < range.upperBound { output[i] = scalar(a[i], b[i], c[i]); i += 1 }
        }
    }

    /// output[r, j] = f(a[r, j], row[j]) for a contiguous [rows, length] `a` and a length-`length` `row`.
    @inline(__always)
    static func zipRows(
        _ a: UnsafePointer<Float>, _ row: UnsafePointer<Float>, _ output: UnsafeMutablePointer<Float>,
        rows: Int, length: Int,
        _ vector: (Vector, Vector) -> Vector, _ scalar: (Float, Float) -> Float
    ) {
        ComputePool.current.parallelFor(rows, minimumChunk: Swift.max(1, minimumChunk / Swift.max(length, 1))) { range in
            for r in range {
                let input = a + r * length, out = output + r * length
                var j = 0
                while j + 8 <= length {
                    VectorMath.store(vector(VectorMath.load(input + j), VectorMath.load(row + j)), out + j)
                    j += 8
                }
                while j < length { out[j] = scalar(input[j], row[j]); j += 1 }
            }
        }
    }
}
