/// Matrix multiplication for the rest of Convoy, on the ``GEMMLibrary`` in use, parallelised by Convoy.
///
/// The library runs single-threaded; each GEMM is cut into row (or column) blocks that the caller's
/// ``ComputePool`` runs, so several ranks in one process each use their own share of the cores, and every
/// output element is computed by one single-threaded kernel call whose blocking depends only on the shape:
/// results are bit-identical run to run for a given library and thread count.
public enum BLAS {
    /// The OpenBLAS build configuration string.
    public static var configuration: String { OpenBLAS.configuration }

    /// Row-major C = alpha · op(A) · op(B) + beta · C, where op(A) is M×K and op(B) is K×N. With beta = 0,
    /// C is only written (NaNs in it do not propagate).
    ///
    /// - Parameters:
    ///   - transposeA: A is stored K×M (row-major) and used transposed.
    ///   - transposeB: B is stored N×K (row-major) and used transposed.
    ///   - library: the GEMM library (tests and benchmarks compare them).
    ///   - pool: the pool that runs the blocks; nil runs on the calling thread only.
    public static func sgemm(
        transposeA: Bool, transposeB: Bool,
        m: Int, n: Int, k: Int,
        alpha: Float = 1,
        a: UnsafePointer<Float>, lda: Int,
        b: UnsafePointer<Float>, ldb: Int,
        beta: Float = 0,
        c: UnsafeMutablePointer<Float>, ldc: Int,
        library: GEMMLibrary = GEMMLibrary.active,
        pool: ComputePool? = ComputePool.current
    ) {
        forEachBlock(transposeA: transposeA, transposeB: transposeB, m: m, n: n, k: k, lda: lda, ldb: ldb, beta: beta,
                     c: c, ldc: ldc, pool: pool) { rows, columns, aOffset, bOffset, cOffset in
            serialSgemm(library, transposeA, transposeB, rows, columns, k, alpha, a + aOffset, lda, b + bOffset, ldb, beta, c + cOffset, ldc)
        }
    }

    /// Runs one single-threaded sgemm on the calling thread (for kernels that parallelise at a higher level,
    /// such as attention over (batch, head) pairs).
    @inline(__always)
    public static func sgemmSerial(
        transposeA: Bool, transposeB: Bool, m: Int, n: Int, k: Int, alpha: Float = 1,
        a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
        beta: Float = 0, c: UnsafeMutablePointer<Float>, ldc: Int,
        library: GEMMLibrary = GEMMLibrary.active
    ) {
        sgemm(transposeA: transposeA, transposeB: transposeB, m: m, n: n, k: k, alpha: alpha, a: a, lda: lda, b: b, ldb: ldb,
              beta: beta, c: c, ldc: ldc, library: library, pool: nil)
    }

    /// Row-major C = alpha · op(A) · op(B) + beta · C with bf16 A and B, fp32 accumulation and fp32 C
    /// (oneDNN's bf16 matmul primitive; on OpenBLAS the operands are widened to fp32, which is exact).
    ///
    /// Parameters as for ``sgemm(transposeA:transposeB:m:n:k:alpha:a:lda:b:ldb:beta:c:ldc:library:pool:)``.
    public static func gemmBF16(
        transposeA: Bool, transposeB: Bool,
        m: Int, n: Int, k: Int,
        alpha: Float = 1,
        a: UnsafePointer<BFloat16>, lda: Int,
        b: UnsafePointer<BFloat16>, ldb: Int,
        beta: Float = 0,
        c: UnsafeMutablePointer<Float>, ldc: Int,
        library: GEMMLibrary = GEMMLibrary.active,
        pool: ComputePool? = ComputePool.current
    ) {
        if library == .oneDNN && OneDNN.supportsBF16 {
            forEachBlock(transposeA: transposeA, transposeB: transposeB, m: m, n: n, k: k, lda: lda, ldb: ldb, beta: beta,
                         c: c, ldc: ldc, pool: pool) { rows, columns, aOffset, bOffset, cOffset in
                OneDNN.gemmBF16(transposeA, transposeB, rows, columns, k, alpha, a + aOffset, lda, b + bOffset, ldb, beta, c + cOffset, ldc)
            }
            return
        }
        // Widening bf16 to fp32 is exact, so this differs from oneDNN's bf16 result only by summation order.
        sgemmOnConverted(transposeA: transposeA, transposeB: transposeB, m: m, n: n, k: k, alpha: alpha, a: a, lda: lda, b: b, ldb: ldb,
                         beta: beta, c: c, ldc: ldc, library: library, pool: pool) { BFloat16.widen($0, to: $1, count: $2, pool: $3) }
    }

    /// Row-major C = alpha · op(A) · op(B) + beta · C from fp32 A and B at the given compute precision:
    /// fp32 runs ``sgemm(transposeA:transposeB:m:n:k:alpha:a:lda:b:ldb:beta:c:ldc:library:pool:)``; bf16 rounds
    /// A and B to bf16 (ties to even) and runs ``gemmBF16(transposeA:transposeB:m:n:k:alpha:a:lda:b:ldb:beta:c:ldc:library:pool:)``,
    /// accumulating in fp32. Rounding costs O(M·K + K·N) against the product's O(M·N·K); an operand used many
    /// times (a weight) is better rounded once and passed to `gemmBF16` directly.
    public static func gemm(
        precision: DType,
        transposeA: Bool, transposeB: Bool,
        m: Int, n: Int, k: Int,
        alpha: Float = 1,
        a: UnsafePointer<Float>, lda: Int,
        b: UnsafePointer<Float>, ldb: Int,
        beta: Float = 0,
        c: UnsafeMutablePointer<Float>, ldc: Int,
        library: GEMMLibrary = GEMMLibrary.active,
        pool: ComputePool? = ComputePool.current
    ) {
        guard precision == .bfloat16 else {
            sgemm(transposeA: transposeA, transposeB: transposeB, m: m, n: n, k: k, alpha: alpha, a: a, lda: lda, b: b, ldb: ldb,
                  beta: beta, c: c, ldc: ldc, library: library, pool: pool)
            return
        }
        guard library == .oneDNN && OneDNN.supportsBF16 else {
            // No bf16 kernel: the operands rounded to bf16 but kept as fp32 feed sgemm directly, one pass
            // each instead of rounding then widening (the same values, so the same result).
            sgemmOnConverted(transposeA: transposeA, transposeB: transposeB, m: m, n: n, k: k, alpha: alpha, a: a, lda: lda, b: b, ldb: ldb,
                             beta: beta, c: c, ldc: ldc, library: library, pool: pool) { BFloat16.roundToFloat($0, to: $1, count: $2, pool: $3) }
            return
        }
        let zero = BFloat16(bitPattern: 0)
        let narrowA = converted(a, rows: transposeA ? k : m, columns: transposeA ? m : k, leadingDimension: lda, zero: zero, pool: pool) {
            BFloat16.round($0, to: $1, count: $2, pool: $3)
        }
        let narrowB = converted(b, rows: transposeB ? n : k, columns: transposeB ? k : n, leadingDimension: ldb, zero: zero, pool: pool) {
            BFloat16.round($0, to: $1, count: $2, pool: $3)
        }
        narrowA.values.withUnsafeBufferPointer { pa in
            narrowB.values.withUnsafeBufferPointer { pb in
                gemmBF16(transposeA: transposeA, transposeB: transposeB, m: m, n: n, k: k, alpha: alpha,
                         a: pa.baseAddress!, lda: narrowA.leadingDimension, b: pb.baseAddress!, ldb: narrowB.leadingDimension,
                         beta: beta, c: c, ldc: ldc,
                         library: library, pool: pool)
            }
        }
    }

    /// sgemm on packed fp32 copies of A and B made by `convert`.
    private static func sgemmOnConverted<Source>(
        transposeA: Bool, transposeB: Bool, m: Int, n: Int, k: Int, alpha: Float,
        a: UnsafePointer<Source>, lda: Int, b: UnsafePointer<Source>, ldb: Int,
        beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int, library: GEMMLibrary, pool: ComputePool?,
        _ convert: (UnsafePointer<Source>, UnsafeMutablePointer<Float>, Int, ComputePool?) -> Void
    ) {
        let wideA = converted(a, rows: transposeA ? k : m, columns: transposeA ? m : k, leadingDimension: lda, zero: Float(0), pool: pool, convert)
        let wideB = converted(b, rows: transposeB ? n : k, columns: transposeB ? k : n, leadingDimension: ldb, zero: Float(0), pool: pool, convert)
        wideA.values.withUnsafeBufferPointer { pa in
            wideB.values.withUnsafeBufferPointer { pb in
                sgemm(transposeA: transposeA, transposeB: transposeB, m: m, n: n, k: k, alpha: alpha,
                      a: pa.baseAddress!, lda: wideA.leadingDimension, b: pb.baseAddress!, ldb: wideB.leadingDimension,
                      beta: beta, c: c, ldc: ldc,
                      library: library, pool: pool)
            }
        }
    }

    /// A stored rows × columns matrix (leading dimension ≥ columns) converted element by element into a packed
    /// copy (leading dimension = columns): only the matrix is read and converted, not the gaps between rows —
    /// a head's Q inside attention's fused QKV rows would otherwise cost 3·heads times its own size.
    private static func converted<Source, Target>(
        _ source: UnsafePointer<Source>, rows: Int, columns: Int, leadingDimension: Int, zero: Target, pool: ComputePool?,
        _ convert: (UnsafePointer<Source>, UnsafeMutablePointer<Target>, Int, ComputePool?) -> Void
    ) -> (values: [Target], leadingDimension: Int) {
        let count = rows * columns
        let values = [Target](unsafeUninitializedCapacity: max(count, 1)) { buffer, initialized in
            buffer.initialize(repeating: zero)
            if leadingDimension == columns || rows <= 1 {
                convert(source, buffer.baseAddress!, count, pool)
            } else if let pool, count >= 1 << 15 {
                pool.parallelFor(rows, minimumChunk: max(1, (1 << 15) / max(columns, 1))) { range in
                    for row in range { convert(source + row * leadingDimension, buffer.baseAddress! + row * columns, columns, nil) }
                }
            } else {
                for row in 0..<rows { convert(source + row * leadingDimension, buffer.baseAddress! + row * columns, columns, nil) }
            }
            initialized = buffer.count
        }
        return (values, max(columns, 1))
    }

    /// Cuts C into row (or column) blocks, one per pool thread, and calls
    /// `body(rows, columns, aOffset, bOffset, cOffset)` for each (element offsets into A, B and C).
    /// Handles the empty cases itself: nothing for an empty C, C = beta · C for an empty inner dimension.
    private static func forEachBlock(
        transposeA: Bool, transposeB: Bool, m: Int, n: Int, k: Int, lda: Int, ldb: Int, beta: Float,
        c: UnsafeMutablePointer<Float>, ldc: Int, pool: ComputePool?,
        _ body: (_ rows: Int, _ columns: Int, _ aOffset: Int, _ bOffset: Int, _ cOffset: Int) -> Void
    ) {
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
            body(m, n, 0, 0, 0)
            return
        }
        if m >= n || m >= 16 * threads {
            // Row blocks: multiples of 8 rows keep the micro-kernel's tiles whole.
            let blocks = blockBounds(total: m, parts: threads, granularity: 8)
            pool.runParts { part in
                guard part < blocks.count - 1 else { return }
                let start = blocks[part], end = blocks[part + 1]
                guard end > start else { return }
                body(end - start, n, transposeA ? start : start * lda, 0, start * ldc)
            }
        } else {
            let blocks = blockBounds(total: n, parts: threads, granularity: 16)
            pool.runParts { part in
                guard part < blocks.count - 1 else { return }
                let start = blocks[part], end = blocks[part + 1]
                guard end > start else { return }
                body(m, end - start, 0, transposeB ? start * ldb : start, start)
            }
        }
    }

    private static func blockBounds(total: Int, parts: Int, granularity: Int) -> [Int] {
        let units = (total + granularity - 1) / granularity
        return (0...parts).map { min(total, units * $0 / parts * granularity) }
    }

    @inline(__always)
    private static func serialSgemm(
        _ library: GEMMLibrary, _ transposeA: Bool, _ transposeB: Bool, _ m: Int, _ n: Int, _ k: Int, _ alpha: Float,
        _ a: UnsafePointer<Float>, _ lda: Int, _ b: UnsafePointer<Float>, _ ldb: Int,
        _ beta: Float, _ c: UnsafeMutablePointer<Float>, _ ldc: Int
    ) {
        switch library {
        case .oneDNN: OneDNN.sgemm(transposeA, transposeB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
        case .openBLAS: OpenBLAS.sgemm(transposeA, transposeB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
        }
    }
}
