import COneDNN

/// oneDNN (Debian's 2.6 build, OpenMP runtime) as a GEMM library for ``BLAS``.
///
/// Every call runs single-threaded on the calling thread: ``BLAS`` splits a GEMM into blocks over the
/// caller's ``ComputePool``, exactly as it does for OpenBLAS. That keeps ranks (threads of one process)
/// from fighting over one OpenMP team, matches oneDNN's own 2-thread speed, and makes each output element
/// the work of one fixed single-threaded kernel, so results are bit-identical run to run for a given
/// thread count. `omp_set_num_threads` applies only to the calling thread, so each thread sets it once.
enum OneDNN {
    /// The CPU engine, created once (oneDNN engines may be shared between threads).
    private final class Engine: Sendable {
        nonisolated(unsafe) let handle: dnnl_engine_t?
        init() {
            var engine: dnnl_engine_t?
            handle = dnnl_engine_create(&engine, dnnl_cpu, 0) == dnnl_success ? engine : nil
        }
    }
    private static let engine = Engine()

    /// What identifies a matmul primitive: its shape, layout, input type and the alpha/beta it folds in.
    private struct MatmulKey: Hashable {
        var m: Int, n: Int, k: Int
        var transposeA: Bool, transposeB: Bool
        var lda: Int, ldb: Int, ldc: Int
        var inputType: UInt32
        var alphaBits: UInt32, betaBits: UInt32
    }

    /// One thread's stream and primitive cache. Primitives cost 0.14–1.65 ms to create and ~4 µs to run
    /// from the cache; keeping them per thread means no locks and no scratchpad shared between threads.
    private final class ThreadState {
        /// Generation with sequence lengths that change every step could otherwise grow the cache forever.
        static let cacheLimit = 512
        let stream: dnnl_stream_t?
        var matmuls: [MatmulKey: UnsafeMutablePointer<convoy_dnnl_matmul>] = [:]

        init() {
            omp_set_num_threads(1)
            var stream: dnnl_stream_t?
            if let engine = OneDNN.engine.handle, dnnl_stream_create(&stream, engine, UInt32(dnnl_stream_default_flags.rawValue)) == dnnl_success {
                self.stream = stream
            } else {
                self.stream = nil
            }
        }

        deinit {
            for matmul in matmuls.values { convoy_dnnl_matmul_destroy(matmul) }
            if let stream { dnnl_stream_destroy(stream) }
        }

        func matmul(for key: MatmulKey) -> UnsafeMutablePointer<convoy_dnnl_matmul>? {
            if let cached = matmuls[key] { return cached }
            guard let engine = OneDNN.engine.handle else { return nil }
            var created: UnsafeMutablePointer<convoy_dnnl_matmul>?
            let status = convoy_dnnl_matmul_create(
                &created, engine, Int64(key.m), Int64(key.n), Int64(key.k), key.transposeA ? 1 : 0, key.transposeB ? 1 : 0,
                Int64(key.lda), Int64(key.ldb), Int64(key.ldc), dnnl_data_type_t(key.inputType),
                Float(bitPattern: key.alphaBits), Float(bitPattern: key.betaBits))
            guard status == dnnl_success, let created else { return nil }
            if matmuls.count >= Self.cacheLimit {
                for matmul in matmuls.values { convoy_dnnl_matmul_destroy(matmul) }
                matmuls.removeAll()
            }
            matmuls[key] = created
            return created
        }
    }
    private static let threadState = ThreadLocal<ThreadState?> { nil }

    private static var currentThreadState: ThreadState {
        if let state = threadState.value { return state }
        let state = ThreadState()
        threadState.value = state
        return state
    }

    /// Whether oneDNN could create its CPU engine (false leaves ``BLAS`` on OpenBLAS).
    static var isAvailable: Bool { engine.handle != nil }

    /// "major.minor.patch" of the library loaded at run time.
    static var version: String {
        guard let version = dnnl_version()?.pointee else { return "unknown" }
        return "\(version.major).\(version.minor).\(version.patch)"
    }

    /// The instruction set oneDNN's kernels use on this CPU.
    static var isa: String {
        switch dnnl_get_effective_cpu_isa() {
        case dnnl_cpu_isa_sse41: return "sse41"
        case dnnl_cpu_isa_avx: return "avx"
        case dnnl_cpu_isa_avx2: return "avx2"
        case dnnl_cpu_isa_avx2_vnni: return "avx2_vnni"
        case dnnl_cpu_isa_avx512_core: return "avx512_core"
        case dnnl_cpu_isa_avx512_core_vnni: return "avx512_core_vnni"
        case dnnl_cpu_isa_avx512_core_bf16: return "avx512_core_bf16"
        case dnnl_cpu_isa_avx512_core_amx: return "avx512_core_amx"
        case let other: return "isa 0x\(String(other.rawValue, radix: 16))"
        }
    }

    /// Whether oneDNN's kernels use AVX-512 here (the ISA values are bit sets: each includes the ones below).
    static var hasAVX512: Bool {
        let core = dnnl_cpu_isa_avx512_core.rawValue
        return dnnl_get_effective_cpu_isa().rawValue & core == core
    }

    /// The implementation oneDNN picks for a bf16 matmul of GPT-mini's size on this thread.
    static var bf16Implementation: String {
        let key = MatmulKey(m: 256, n: 1152, k: 384, transposeA: false, transposeB: false, lda: 384, ldb: 1152, ldc: 1152,
                            inputType: dnnl_bf16.rawValue, alphaBits: Float(1).bitPattern, betaBits: Float(0).bitPattern)
        guard let matmul = currentThreadState.matmul(for: key) else { return "unavailable" }
        return withUnsafeBytes(of: matmul.pointee.implementation) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
    }

    /// Row-major single-threaded sgemm on the calling thread (`dnnl_sgemm`).
    @inline(__always)
    static func sgemm(
        _ transposeA: Bool, _ transposeB: Bool, _ m: Int, _ n: Int, _ k: Int, _ alpha: Float,
        _ a: UnsafePointer<Float>, _ lda: Int, _ b: UnsafePointer<Float>, _ ldb: Int,
        _ beta: Float, _ c: UnsafeMutablePointer<Float>, _ ldc: Int
    ) {
        _ = currentThreadState  // this thread's OpenMP thread count is 1
        let status = dnnl_sgemm(
            CChar(UInt8(ascii: transposeA ? "T" : "N")), CChar(UInt8(ascii: transposeB ? "T" : "N")),
            Int64(m), Int64(n), Int64(k), alpha, a, Int64(lda), b, Int64(ldb), beta, c, Int64(ldc))
        precondition(status == dnnl_success, "dnnl_sgemm(\(m)×\(n)×\(k)) failed with status \(status.rawValue)")
    }

    /// Whether oneDNN has a bf16 matmul on this CPU (2.x needs AVX-512; AVX512-BF16 makes it fast).
    static let supportsBF16: Bool = isAvailable && bf16Implementation != "unavailable"

    /// Row-major bf16 × bf16 → fp32 GEMM on the calling thread through a cached matmul primitive
    /// (check ``supportsBF16`` first).
    static func gemmBF16(
        _ transposeA: Bool, _ transposeB: Bool, _ m: Int, _ n: Int, _ k: Int, _ alpha: Float,
        _ a: UnsafePointer<BFloat16>, _ lda: Int, _ b: UnsafePointer<BFloat16>, _ ldb: Int,
        _ beta: Float, _ c: UnsafeMutablePointer<Float>, _ ldc: Int
    ) {
        let state = currentThreadState
        let key = MatmulKey(m: m, n: n, k: k, transposeA: transposeA, transposeB: transposeB, lda: lda, ldb: ldb, ldc: ldc,
                            inputType: dnnl_bf16.rawValue, alphaBits: alpha.bitPattern, betaBits: beta.bitPattern)
        guard let stream = state.stream, let matmul = state.matmul(for: key) else {
            preconditionFailure("oneDNN has no bf16 matmul for \(m)×\(n)×\(k) (transposes \(transposeA), \(transposeB)); run with CONVOY_GEMM=openblas")
        }
        let status = convoy_dnnl_matmul_execute(matmul, stream, a, b, c)
        precondition(status == dnnl_success, "oneDNN bf16 matmul (\(m)×\(n)×\(k)) failed with status \(status.rawValue)")
    }
}
