import ConvoyTensor
import Foundation
import Testing

/// Both GEMM libraries, fp32 and bf16, against a Double reference.
///
/// Errors are measured normwise, max |C − reference| ÷ max |reference| over the block written (elementwise
/// relative error is meaningless where a sum cancels to near zero).
@Suite struct GEMMLibraryTests {
    struct Case: Sendable, CustomTestStringConvertible {
        var m: Int, n: Int, k: Int
        var transposeA: Bool, transposeB: Bool
        var library: GEMMLibrary
        var threads: Int
        var testDescription: String { "\(library.rawValue) \(m)x\(n)x\(k) tA \(transposeA) tB \(transposeB) \(threads) threads" }

        // Stored operands with leading dimensions wider than the matrices, so strides are exercised.
        var aRows: Int { transposeA ? k : m }
        var aColumns: Int { transposeA ? m : k }
        var bRows: Int { transposeB ? n : k }
        var bColumns: Int { transposeB ? k : n }
        var lda: Int { aColumns + 3 }
        var ldb: Int { bColumns + 2 }
        var ldc: Int { n + 5 }
    }

    /// Odd shapes, one split into row blocks, one into column blocks, one too small to split, and a vector.
    static let shapes = [(1, 1, 1), (7, 13, 5), (33, 17, 65), (70, 33, 64), (5, 300, 100), (129, 67, 31)]
    static func cases(threads: [Int]) -> [Case] {
        GEMMLibrary.allCases.flatMap { library in
            threads.flatMap { threadCount in
                shapes.flatMap { shape in
                    [(false, false), (true, false), (false, true), (true, true)].map {
                        Case(m: shape.0, n: shape.1, k: shape.2, transposeA: $0.0, transposeB: $0.1, library: library, threads: threadCount)
                    }
                }
            }
        }
    }

    static func operands(_ c: Case) -> (a: [Float], b: [Float]) {
        (TestData.uniform([c.aRows * c.lda], seed: 601).toArray(), TestData.uniform([c.bRows * c.ldb], seed: 602).toArray())
    }

    /// alpha · op(A) · op(B) + beta · C in Double, with C's initial contents `initial` (ignored when beta = 0).
    static func reference(_ c: Case, a: [Double], b: [Double], alpha: Double, beta: Double, initial: [Float]) -> [Double] {
        var output = initial.map(Double.init)
        for i in 0..<c.m {
            for j in 0..<c.n {
                var total = 0.0
                for p in 0..<c.k {
                    let x = c.transposeA ? a[p * c.lda + i] : a[i * c.lda + p]
                    let y = c.transposeB ? b[j * c.ldb + p] : b[p * c.ldb + j]
                    total += x * y
                }
                output[i * c.ldc + j] = alpha * total + (beta == 0 ? 0 : beta * output[i * c.ldc + j])
            }
        }
        return output
    }

    /// The normwise error over C's m × n block, and whether everything outside it is unchanged.
    static func check(_ c: Case, actual: [Float], expected: [Double], initial: [Float]) -> (error: Double, outsideUntouched: Bool) {
        var worst = 0.0, scale = 0.0, untouched = true
        for i in 0..<c.m {
            for j in 0..<c.ldc {
                let index = i * c.ldc + j
                if j < c.n {
                    worst = max(worst, Double(actual[index]).isFinite ? abs(Double(actual[index]) - expected[index]) : .infinity)
                    scale = max(scale, abs(expected[index]))
                } else if actual[index].bitPattern != initial[index].bitPattern {
                    untouched = false
                }
            }
        }
        return (worst / max(scale, .leastNormalMagnitude), untouched)
    }

    /// Runs one GEMM on a copy of `initial`: fp32 operands as given, or (bf16) rounded to bf16 first.
    static func run(_ c: Case, a: [Float], b: [Float], bf16: Bool = false, alpha: Float, beta: Float, initial: [Float]) -> [Float] {
        var output = initial
        let pool = TestPools.pool(threads: c.threads)
        func call<Element>(_ a: [Element], _ b: [Element], _ gemm: (UnsafePointer<Element>, UnsafePointer<Element>, UnsafeMutablePointer<Float>) -> Void) {
            a.withUnsafeBufferPointer { pa in
                b.withUnsafeBufferPointer { pb in
                    output.withUnsafeMutableBufferPointer { pc in gemm(pa.baseAddress!, pb.baseAddress!, pc.baseAddress!) }
                }
            }
        }
        if bf16 {
            call(a.map(BFloat16.init), b.map(BFloat16.init)) { pa, pb, pc in
                BLAS.gemmBF16(transposeA: c.transposeA, transposeB: c.transposeB, m: c.m, n: c.n, k: c.k, alpha: alpha,
                              a: pa, lda: c.lda, b: pb, ldb: c.ldb, beta: beta, c: pc, ldc: c.ldc, library: c.library, pool: pool)
            }
        } else {
            call(a, b) { pa, pb, pc in
                BLAS.sgemm(transposeA: c.transposeA, transposeB: c.transposeB, m: c.m, n: c.n, k: c.k, alpha: alpha,
                           a: pa, lda: c.lda, b: pb, ldb: c.ldb, beta: beta, c: pc, ldc: c.ldc, library: c.library, pool: pool)
            }
        }
        return output
    }

    /// The operands as bf16 rounds them, in Double.
    static func roundedToBF16(_ values: [Float]) -> [Double] { values.map { Double(BFloat16($0).floatValue) } }

    @Test(arguments: cases(threads: [1, 2]))
    func sgemmWithBetaZeroOverwritesNaNAndMatchesDouble(_ c: Case) {
        let (a, b) = Self.operands(c)
        let initial = [Float](repeating: .nan, count: c.m * c.ldc)
        let actual = Self.run(c, a: a, b: b, alpha: 1, beta: 0, initial: initial)
        let expected = Self.reference(c, a: a.map(Double.init), b: b.map(Double.init), alpha: 1, beta: 0, initial: initial)
        let (error, untouched) = Self.check(c, actual: actual, expected: expected, initial: initial)
        #expect(error <= 2e-6, "normwise relative error \(error)")
        #expect(untouched, "elements outside the m × n block changed")
    }

    @Test(arguments: cases(threads: [1, 2]))
    func sgemmAccumulatesWithAlphaAndBeta(_ c: Case) {
        let (a, b) = Self.operands(c)
        let initial = TestData.uniform([c.m * c.ldc], seed: 603).toArray()
        let actual = Self.run(c, a: a, b: b, alpha: 0.5, beta: 0.75, initial: initial)
        let expected = Self.reference(c, a: a.map(Double.init), b: b.map(Double.init), alpha: 0.5, beta: 0.75, initial: initial)
        let (error, untouched) = Self.check(c, actual: actual, expected: expected, initial: initial)
        #expect(error <= 2e-6, "normwise relative error \(error)")
        #expect(untouched, "elements outside the m × n block changed")
    }

    /// bf16 inputs, fp32 accumulation: exact products of the rounded inputs summed in fp32, so against a
    /// Double reference of the *rounded* inputs the fp32 tolerance holds; against the unrounded inputs each
    /// element is within the rounding bound (2·2⁻⁹ + 2⁻¹⁸ relative per product, plus fp32 summation) of Σ|a||b|.
    @Test(arguments: cases(threads: [1, 2]))
    func bf16GemmIsWithinTheRoundingBound(_ c: Case) {
        let (a, b) = Self.operands(c)
        let initial = [Float](repeating: .nan, count: c.m * c.ldc)
        let actual = Self.run(c, a: a, b: b, bf16: true, alpha: 1, beta: 0, initial: initial)

        let ofRounded = Self.reference(c, a: Self.roundedToBF16(a), b: Self.roundedToBF16(b), alpha: 1, beta: 0, initial: initial)
        let (error, untouched) = Self.check(c, actual: actual, expected: ofRounded, initial: initial)
        #expect(error <= 2e-6, "normwise relative error against the rounded inputs \(error)")
        #expect(untouched, "elements outside the m × n block changed")

        let exact = Self.reference(c, a: a.map(Double.init), b: b.map(Double.init), alpha: 1, beta: 0, initial: initial)
        let magnitudes = Self.reference(c, a: a.map { abs(Double($0)) }, b: b.map { abs(Double($0)) }, alpha: 1, beta: 0, initial: initial)
        let unitRoundoff = 0x1p-9, fp32Roundoff = 0x1p-24
        let bound = 2 * unitRoundoff + unitRoundoff * unitRoundoff + Double(c.k + 1) * fp32Roundoff
        var worst = 0.0
        for i in 0..<c.m {
            for j in 0..<c.n {
                let index = i * c.ldc + j
                worst = max(worst, abs(Double(actual[index]) - exact[index]) / (bound * magnitudes[index]))
            }
        }
        #expect(worst <= 1, "an element exceeds the bf16 rounding bound by \(worst)×")
    }

    @Test(arguments: cases(threads: [2]))
    func bf16GemmAccumulatesWithAlphaAndBeta(_ c: Case) {
        let (a, b) = Self.operands(c)
        let initial = TestData.uniform([c.m * c.ldc], seed: 604).toArray()
        let actual = Self.run(c, a: a, b: b, bf16: true, alpha: 0.5, beta: 0.75, initial: initial)
        let expected = Self.reference(c, a: Self.roundedToBF16(a), b: Self.roundedToBF16(b), alpha: 0.5, beta: 0.75, initial: initial)
        let (error, untouched) = Self.check(c, actual: actual, expected: expected, initial: initial)
        #expect(error <= 2e-6, "normwise relative error \(error)")
        #expect(untouched, "elements outside the m × n block changed")
    }

    /// The fallback (OpenBLAS) and the default (oneDNN) agree within fp32 tolerance on the same inputs.
    @Test(arguments: cases(threads: [2]).filter { $0.library == .oneDNN })
    func openBLASFallbackAgreesWithOneDNN(_ c: Case) {
        let (a, b) = Self.operands(c)
        let initial = TestData.uniform([c.m * c.ldc], seed: 605).toArray()
        var fallback = c
        fallback.library = .openBLAS
        let oneDNN = Self.run(c, a: a, b: b, alpha: 1, beta: 1, initial: initial)
        let openBLAS = Self.run(fallback, a: a, b: b, alpha: 1, beta: 1, initial: initial)
        let (error, _) = Self.check(c, actual: openBLAS, expected: oneDNN.map(Double.init), initial: initial)
        #expect(error <= 4e-6, "OpenBLAS vs oneDNN: normwise relative difference \(error)")
        let oneDNNBF16 = Self.run(c, a: a, b: b, bf16: true, alpha: 1, beta: 1, initial: initial)
        let openBLASBF16 = Self.run(fallback, a: a, b: b, bf16: true, alpha: 1, beta: 1, initial: initial)
        let (bf16Error, _) = Self.check(c, actual: openBLASBF16, expected: oneDNNBF16.map(Double.init), initial: initial)
        #expect(bf16Error <= 4e-6, "bf16 OpenBLAS fallback vs oneDNN: normwise relative difference \(bf16Error)")
    }

    /// Equivalence and resume tests compare bit for bit: the same call on the same pool gives the same bits.
    @Test(arguments: GEMMLibrary.allCases)
    func resultsAreBitIdenticalRunToRun(_ library: GEMMLibrary) {
        let c = Case(m: 256, n: 192, k: 384, transposeA: true, transposeB: false, library: library, threads: 2)
        let (a, b) = Self.operands(c)
        let initial = [Float](repeating: 0, count: c.m * c.ldc)
        let first = Self.run(c, a: a, b: b, alpha: 1, beta: 0, initial: initial)
        let second = Self.run(c, a: a, b: b, alpha: 1, beta: 0, initial: initial)
        #expect(first.map(\.bitPattern) == second.map(\.bitPattern))
        let firstBF16 = Self.run(c, a: a, b: b, bf16: true, alpha: 1, beta: 0, initial: initial)
        let secondBF16 = Self.run(c, a: a, b: b, bf16: true, alpha: 1, beta: 0, initial: initial)
        #expect(firstBF16.map(\.bitPattern) == secondBF16.map(\.bitPattern))
    }

    /// The fp32-input entry point at bf16 precision is the bf16 GEMM of the rounded operands, bit for bit;
    /// at fp32 precision it is sgemm.
    @Test(arguments: cases(threads: [2]).filter { $0.m == 70 || $0.m == 5 })
    func gemmAtAPrecisionRoundsItsOperands(_ c: Case) {
        let (a, b) = Self.operands(c)
        let initial = TestData.uniform([c.m * c.ldc], seed: 606).toArray()
        for precision in DType.allCases {
            var output = initial
            a.withUnsafeBufferPointer { pa in
                b.withUnsafeBufferPointer { pb in
                    output.withUnsafeMutableBufferPointer { pc in
                        BLAS.gemm(precision: precision, transposeA: c.transposeA, transposeB: c.transposeB, m: c.m, n: c.n, k: c.k,
                                  alpha: 0.5, a: pa.baseAddress!, lda: c.lda, b: pb.baseAddress!, ldb: c.ldb, beta: 0.75,
                                  c: pc.baseAddress!, ldc: c.ldc, library: c.library, pool: TestPools.two)
                    }
                }
            }
            let expected = Self.run(c, a: a, b: b, bf16: precision == .bfloat16, alpha: 0.5, beta: 0.75, initial: initial)
            #expect(output.map(\.bitPattern) == expected.map(\.bitPattern), "\(precision)")
        }
    }

    @Test func environmentChoosesTheLibrary() throws {
        #expect(try GEMMLibrary.fromEnvironment([:]) == GEMMLibrary.preferred)
        #expect(try GEMMLibrary.fromEnvironment(["CONVOY_GEMM": ""]) == GEMMLibrary.preferred)
        #expect(try GEMMLibrary.fromEnvironment(["CONVOY_GEMM": "openblas"]) == .openBLAS)
        #expect(try GEMMLibrary.fromEnvironment(["CONVOY_GEMM": "oneDNN"]) == .oneDNN)
        #expect(throws: ConvoyError.self) { try GEMMLibrary.fromEnvironment(["CONVOY_GEMM": "mkl"]) }
    }

    /// Convoy's speed must not depend on OPENBLAS_CORETYPE: unless the user sets it, OpenBLAS never runs its
    /// Zen blocking (slow at Convoy's single-threaded row blocks); the other tests here check the re-selected
    /// kernels' results.
    @Test func openBLASKernelsDoNotDependOnTheEnvironment() {
        if getenv("OPENBLAS_CORETYPE") == nil {
            #expect(GEMMLibrary.openBLAS.isa.lowercased() != "zen", "OpenBLAS runs \(GEMMLibrary.openBLAS.isa)")
        }
    }

    @Test func librariesReportVersionAndISA() {
        for library in GEMMLibrary.allCases {
            #expect(!library.version.isEmpty && library.version != "unknown", "\(library.name) version")
            #expect(!library.isa.isEmpty && library.isa != "unknown", "\(library.name) ISA")
        }
    }
}
