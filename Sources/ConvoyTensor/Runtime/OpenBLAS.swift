import COpenBLAS

/// OpenBLAS, the fallback GEMM library: single-threaded `cblas_sgemm` calls that ``BLAS`` splits over a
/// ``ComputePool``.
enum OpenBLAS {
    /// OpenBLAS's thread count is process-wide and ranks are threads of one process, so it is set to one
    /// thread once, and Convoy splits the work.
    private static let singleThreaded: Bool = {
        openblas_set_num_threads(1)
        return true
    }()

    /// The OpenBLAS build configuration string (version, architecture options).
    static var configuration: String {
        guard let text = openblas_get_config() else { return "unknown" }
        return String(cString: text)
    }

    /// The version, the second word of the configuration string ("OpenBLAS 0.3.21 DYNAMIC_ARCH …").
    static var version: String {
        let words = configuration.split(separator: " ")
        return words.count > 1 ? String(words[1]) : configuration
    }

    /// The CPU core OpenBLAS chose kernels for (OPENBLAS_CORETYPE overrides its own detection).
    static var coreName: String {
        guard let text = openblas_get_corename() else { return "unknown" }
        return String(cString: text)
    }

    /// Row-major single-threaded sgemm on the calling thread.
    @inline(__always)
    static func sgemm(
        _ transposeA: Bool, _ transposeB: Bool, _ m: Int, _ n: Int, _ k: Int, _ alpha: Float,
        _ a: UnsafePointer<Float>, _ lda: Int, _ b: UnsafePointer<Float>, _ ldb: Int,
        _ beta: Float, _ c: UnsafeMutablePointer<Float>, _ ldc: Int
    ) {
        _ = singleThreaded
        cblas_sgemm(
            CblasRowMajor, transposeA ? CblasTrans : CblasNoTrans, transposeB ? CblasTrans : CblasNoTrans,
            Int32(m), Int32(n), Int32(k), alpha, a, Int32(lda), b, Int32(ldb), beta, c, Int32(ldc))
    }
}
