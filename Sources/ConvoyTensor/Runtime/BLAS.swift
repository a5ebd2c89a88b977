import COpenBLAS

/// Matrix multiplication through OpenBLAS's `cblas_sgemm`, parallelised by Convoy.
///
/// OpenBLAS is set to one thread once, process-wide; each GEMM is cut into row (or column) blocks that the
/// caller's ``ComputePool`` runs, so several ranks in one process each use their own share of the cores.
public enum BLAS {
    private static let singleThreaded: Bool = {
        openblas_set_num_threads(1)
        return true
    }()

    /// Makes sure OpenBLAS runs single-threaded (idempotent; called before every GEMM).
    @inline(__always)
    public static func ensureConfigured() { _ = singleThreaded }

    /// The OpenBLAS build configuration string.
    public static var configuration: String {
        guard let text = openblas_get_config() else { return "unknown" }
        return String(cString: text)
    }

    /// Row-major C = alpha · op(A) · op(B) + beta · C, where op(A) is M×K and op(B) is K×N.
    ///
    /// - Parameters:
    ///   - transposeA: A is stored K×M (row-major) and used transposed.
    ///   - transposeB: B is stored N×K (row-major) and used transposed.
    ///   - pool: the pool that runs the blocks; nil runs on the calling thread only.
    public static func sgemm(
        transposeA: Bool, transposeB: Bool,
        m: Int, n: Int, k: Int,
        alpha: Float = 1,
        a: UnsafePointer<Float>, lda: Int,
        b: UnsafePointer<Float>, ldb: Int,
        beta: Float = 0,
        c: UnsafeMutablePointer<Float>, ldc: Int,
        pool: ComputePool? = ComputePool.current
    ) {
        ensureConfigured()
        guard m > 0, n > 0 else { return }
        if k == 0 {
            for row in 0..<m {
                let cRow = c + row * ldc
                for col in 0..<n { cRow[col] = beta == 0 ? 0 : beta * cRow[col] }
            }
            return
        }
        let threads = pool?.threadCount ?? 1
        // Small products are not worth a dispatch.
        let flops = 2 * m * n * k
        guard let pool, threads > 1, flops >= 1 << 18 else {
            callSgemm(transposeA, transposeB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
            return
        }
        if m >= n || m >= 16 * threads {
            // Row blocks: multiples of 8 rows keep the micro-kernel's tiles whole.
            let blocks = blockBounds(total: m, parts: threads, granularity: 8)
            pool.runParts { part in
                guard part < blocks.count - 1 else { return }
                let start = blocks[part], end = blocks[part + 1]
                guard end > start else { return }
                let aBlock = transposeA ? a + start : a + start * lda
                callSgemm(transposeA, transposeB, end - start, n, k, alpha, aBlock, lda, b, ldb, beta, c + start * ldc, ldc)
            }
        } else {
            let blocks = blockBounds(total: n, parts: threads, granularity: 16)
            pool.runParts { part in
                guard part < blocks.count - 1 else { return }
                let start = blocks[part], end = blocks[part + 1]
                guard end > start else { return }
                let bBlock = transposeB ? b + start * ldb : b + start
                callSgemm(transposeA, transposeB, m, end - start, k, alpha, a, lda, bBlock, ldb, beta, c + start, ldc)
            }
        }
    }

    /// Runs one single-threaded sgemm on the calling thread (for kernels that parallelise at a higher level,
    /// such as attention over (batch, head) pairs).
    @inline(__always)
    public static func sgemmSerial(
        transposeA: Bool, transposeB: Bool, m: Int, n: Int, k: Int, alpha: Float = 1,
        a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
        beta: Float = 0, c: UnsafeMutablePointer<Float>, ldc: Int
    ) {
        ensureConfigured()
        callSgemm(transposeA, transposeB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
    }

    private static func blockBounds(total: Int, parts: Int, granularity: Int) -> [Int] {
        let units = (total + granularity - 1) / granularity
        return (0...parts).map { min(total, units * $0 / parts * granularity) }
    }

    @inline(__always)
    private static func callSgemm(
        _ transposeA: Bool, _ transposeB: Bool, _ m: Int, _ n: Int, _ k: Int, _ alpha: Float,
        _ a: UnsafePointer<Float>, _ lda: Int, _ b: UnsafePointer<Float>, _ ldb: Int,
        _ beta: Float, _ c: UnsafeMutablePointer<Float>, _ ldc: Int
    ) {
        cblas_sgemm(
            CblasRowMajor, transposeA ? CblasTrans : CblasNoTrans, transposeB ? CblasTrans : CblasNoTrans,
            Int32(m), Int32(n), Int32(k), alpha, a, Int32(lda), b, Int32(ldb), beta, c, Int32(ldc))
    }
}
