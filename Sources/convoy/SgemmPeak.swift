import ConvoyTensor
import Foundation

/// This machine's achievable GEMM rate, measured with Convoy's own GEMM path (the library in use,
/// single-threaded on row blocks of the given pool) so that MFU compares like with like.
enum SgemmPeak {
    /// One GEMM to time: shape, layout and input precision.
    struct Shape {
        var m: Int, n: Int, k: Int
        var transposeA = false, transposeB = false
        var description: String { "\(m)×\(n)×\(k)\(transposeA ? " Aᵀ" : "")\(transposeB ? " Bᵀ" : "")" }
    }

    /// Operands for one shape, allocated once and reused by every timed call.
    struct Operands {
        let shape: Shape
        let a: Tensor, b: Tensor, c: Tensor
        let a16: [BFloat16], b16: [BFloat16]

        init(_ shape: Shape) {
            self.shape = shape
            a = Tensor.randomUniform([shape.m * shape.k], seed: 1)
            b = Tensor.randomUniform([shape.k * shape.n], seed: 2)
            c = Tensor.zeros([shape.m * shape.n])
            a16 = a.toArray().map(BFloat16.init)
            b16 = b.toArray().map(BFloat16.init)
        }

        /// Seconds for one GEMM, fp32 or bf16 inputs, on `library` over `pool`.
        func time(library: GEMMLibrary, bf16: Bool, pool: ComputePool) -> Double {
            let s = shape
            let lda = s.transposeA ? s.m : s.k, ldb = s.transposeB ? s.k : s.n
            let start = DispatchTime.now().uptimeNanoseconds
            if bf16 {
                a16.withUnsafeBufferPointer { pa in
                    b16.withUnsafeBufferPointer { pb in
                        BLAS.gemmBF16(transposeA: s.transposeA, transposeB: s.transposeB, m: s.m, n: s.n, k: s.k,
                                      a: pa.baseAddress!, lda: lda, b: pb.baseAddress!, ldb: ldb, c: c.floatPointer, ldc: s.n,
                                      library: library, pool: pool)
                    }
                }
            } else {
                BLAS.sgemm(transposeA: s.transposeA, transposeB: s.transposeB, m: s.m, n: s.n, k: s.k,
                           a: a.floatPointer, lda: lda, b: b.floatPointer, ldb: ldb, c: c.floatPointer, ldc: s.n,
                           library: library, pool: pool)
            }
            return Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
        }

        /// GFLOP/s of one GEMM taking `seconds`.
        func gflops(seconds: Double) -> Double { 2 * Double(shape.m) * Double(shape.n) * Double(shape.k) / seconds / 1e9 }
    }

    /// Best GFLOP/s of the active library, fp32 or bf16 inputs (fp32 accumulation), over several repetitions
    /// of a large square GEMM and of the GPT's largest GEMM shape.
    static func measure(pool: ComputePool, bf16: Bool = false, repetitions: Int = 8) -> (gflops: Double, shape: String) {
        var best = (gflops: 0.0, shape: "")
        for shape in [Shape(m: 1024, n: 1024, k: 1024), Shape(m: 2048, n: 1536, k: 384)] {
            let operands = Operands(shape)
            for _ in 0..<repetitions {
                let gflops = operands.gflops(seconds: operands.time(library: GEMMLibrary.active, bf16: bf16, pool: pool))
                if gflops > best.gflops { best = (gflops, shape.description) }
            }
        }
        return best
    }
}
