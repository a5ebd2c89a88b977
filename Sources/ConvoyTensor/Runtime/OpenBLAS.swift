import COpenBLAS
#if canImport(Glibc)
import Glibc
#endif

/// OpenBLAS, the fallback GEMM library: single-threaded `cblas_sgemm` calls that ``BLAS`` splits over a
/// ``ComputePool``.
enum OpenBLAS {
    /// OpenBLAS's thread count is process-wide and ranks are threads of one process, so it is set to one
    /// thread once, and Convoy splits the work. The kernel choice is settled first (``preferredCore``).
    private static let singleThreaded: Bool = {
        chooseCore()
        openblas_set_num_threads(1)
        return true
    }()

    /// The core whose kernels Convoy asks for when OpenBLAS detected `detected` and OPENBLAS_CORETYPE is unset:
    /// Haswell's in place of Zen's. Debian's OpenBLAS 0.3.21 runs the same AVX2 micro-kernels for both, but
    /// Zen's blocking is slow at the single-threaded row blocks Convoy hands it (measured on this machine's
    /// AVX2 EPYC VM: 38 vs 108 GFLOP/s at small GPT shapes, see `convoy bench gemm`); nil keeps OpenBLAS's choice.
    static func preferredCore(detected: String) -> String? {
        detected.lowercased() == "zen" ? "Haswell" : nil
    }

    /// Re-selects OpenBLAS's kernels for ``preferredCore(detected:)`` unless the user set OPENBLAS_CORETYPE,
    /// so Convoy's speed does not depend on that variable. Runs once, before the first GEMM.
    private static func chooseCore() {
        guard getenv("OPENBLAS_CORETYPE") == nil, let core = preferredCore(detected: currentCore) else { return }
        setenv("OPENBLAS_CORETYPE", core, 0)
        gotoblas_dynamic_quit()
        gotoblas_dynamic_init()
        // The variable was only for OpenBLAS's own reading; child processes decide for themselves.
        unsetenv("OPENBLAS_CORETYPE")
    }

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

    /// The CPU core whose kernels OpenBLAS runs (OPENBLAS_CORETYPE overrides its own detection; Convoy's
    /// ``preferredCore(detected:)`` replaces Zen by Haswell before the first GEMM).
    static var coreName: String {
        _ = singleThreaded
        return currentCore
    }

    private static var currentCore: String {
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
