import ConvoyTensor
import Foundation

/// This machine's achievable sgemm rate, measured with Convoy's own GEMM path (single-threaded OpenBLAS
/// on row blocks of the given pool) so that MFU compares like with like.
enum SgemmPeak {
    /// Best GFLOP/s over several repetitions of a large square GEMM and of the GPT's largest GEMM shape.
    static func measure(pool: ComputePool, repetitions: Int = 8) -> (gflops: Double, shape: String) {
        var best = (gflops: 0.0, shape: "")
        for (m, n, k) in [(1024, 1024, 1024), (2048, 1536, 384)] {
            let a = Tensor.randomUniform([m, k], seed: 1), b = Tensor.randomUniform([k, n], seed: 2)
            let c = Tensor.zeros([m, n])
            for _ in 0..<repetitions {
                let start = DispatchTime.now().uptimeNanoseconds
                BLAS.sgemm(transposeA: false, transposeB: false, m: m, n: n, k: k, a: a.floatPointer, lda: k, b: b.floatPointer, ldb: n, c: c.floatPointer, ldc: n, pool: pool)
                let seconds = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
                let gflops = 2 * Double(m) * Double(n) * Double(k) / seconds / 1e9
                if gflops > best.gflops { best = (gflops, "\(m)×\(n)×\(k)") }
            }
        }
        return best
    }
}
