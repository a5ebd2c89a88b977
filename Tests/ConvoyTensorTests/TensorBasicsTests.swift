import ConvoyTensor
import Dispatch
import Foundation
import Synchronization
import Testing

// MARK: - BFloat16 and Float16

@Suite struct BFloat16Tests {
    /// Round-to-nearest-even to BFloat16 computed independently: pick the nearer of the two neighbouring
    /// BFloat16 values in Double, ties to the even bit pattern.
    static func referenceBits(_ value: Float) -> UInt16 {
        let bits = value.bitPattern
        let down = UInt16(truncatingIfNeeded: bits >> 16)
        let up = down &+ 1
        let lower = Double(Float(bitPattern: UInt32(down) << 16)), upper = Double(Float(bitPattern: UInt32(up) << 16))
        let v = Double(value)
        let distanceDown = abs(v - lower), distanceUp = upper.isInfinite ? (abs(v - Double(Float.greatestFiniteMagnitude)) + 1e300) : abs(v - upper)
        if upper.isInfinite {
            // Above the largest BFloat16 by at least half an ulp of it, IEEE rounding overflows to infinity.
            let largest = Double(Float(bitPattern: 0x7F7F_0000)), halfUlp = Double(Float(bitPattern: 0x7F7F_0000).ulp) * 65536 / 2
            return abs(v) >= largest + halfUlp ? up : down
        }
        if distanceDown < distanceUp { return down }
        if distanceUp < distanceDown { return up }
        return down & 1 == 0 ? down : up
    }

    @Test func roundsToNearestWithTiesToEven() {
        let cases: [(UInt32, UInt16)] = [
            (0x3F80_0000, 0x3F80),  // 1.0, exact
            (0x3F80_8000, 0x3F80),  // 1 + 2⁻⁸: halfway, 0x3F80 is even → down
            (0x3F81_8000, 0x3F82),  // halfway, 0x3F81 is odd → up
            (0x3F80_8001, 0x3F81),  // just above halfway → up
            (0x3F81_7FFF, 0x3F81),  // just below halfway → down
            (0xBF81_8000, 0xBF82),  // negative tie → even
            (0x3F7F_FFFF, 0x3F80),  // carries into the exponent
            (0x0000_8000, 0x0000),  // subnormal tie → even (zero)
            (0x0001_8000, 0x0002),  // subnormal tie → even
            (0x8000_0000, 0x8000),  // −0
            (0x7F80_0000, 0x7F80),  // +∞
            (0xFF80_0000, 0xFF80),  // −∞
            (0x7F7F_FFFF, 0x7F80),  // the largest Float rounds up to ∞
        ]
        for (input, expected) in cases {
            #expect(BFloat16(Float(bitPattern: input)).bitPattern == expected, "0x\(String(input, radix: 16))")
        }
    }

    @Test func nanStaysNaN() {
        // A NaN whose payload sits only in the low 16 bits would truncate to ∞ without care.
        for bits: UInt32 in [0x7FC0_0000, 0x7F80_0001, 0xFF80_0001, 0x7FFF_FFFF] {
            #expect(BFloat16(Float(bitPattern: bits)).floatValue.isNaN, "0x\(String(bits, radix: 16))")
        }
    }

    @Test func matchesAnIndependentRoundingOnRandomFloats() {
        let generator = PhiloxRandom(seed: 5, stream: 6)
        for i in 0..<20_000 {
            let words = generator.block(UInt64(i))
            let value = Float(bitPattern: words.0)
            guard value.isFinite else { continue }
            #expect(BFloat16(value).bitPattern == Self.referenceBits(value), "\(value) (0x\(String(words.0, radix: 16)))")
        }
    }

    @Test func everyBFloat16RoundTripsExactly() {
        for bits in 0...UInt16.max {
            let value = BFloat16(bitPattern: bits).floatValue
            if value.isNaN { continue }
            #expect(BFloat16(value).bitPattern == bits)
            #expect(value.bitPattern == UInt32(bits) << 16)
        }
    }

    @Test func tensorConversionsBothWays() {
        let values: [Float] = [1, 1.00390625, 1.01171875, -3.14159, 1e-3, 65504, -0.0, 3e38]
        let x = Tensor(shape: [2, 4], values: values)
        let half = x.converted(to: .bfloat16)
        #expect(half.dtype == .bfloat16 && half.shape == [2, 4])
        #expect(half.storage.count == 8 && half.storage.dtype.byteSize == 2)
        let back = half.converted(to: .float32)
        #expect(back.dtype == .float32)
        #expect(back.toArray() == values.map { BFloat16($0).floatValue })
        #expect(half.toArray() == back.toArray())
        // Converting to the same dtype is the identity.
        #expect(x.converted(to: .float32) === x)
        // Non-contiguous views convert in logical (row-major) order, in both directions.
        #expect(x.transposed().converted(to: .bfloat16).toArray() == Tensor(shape: [4, 2], values: x.transposed().toArray()).converted(to: .bfloat16).toArray())
        #expect(half.transposed().converted(to: .float32).toArray() == back.transposed().toArray())
        #expect(half.slice(axis: 1, 1..<3).converted(to: .float32).toArray() == back.slice(axis: 1, 1..<3).toArray())
    }

    @Test func float16BitsRoundTripAndRound() {
        for bits in 0...UInt16.max {
            let value = Float16Bits.toFloat(bits)
            if value.isNaN { continue }
            #expect(Float16Bits.fromFloat(value) == bits, "0x\(String(bits, radix: 16))")
        }
        #expect(Float16Bits.toFloat(0x3C00) == 1)
        #expect(Float16Bits.toFloat(0x0001) == Float(sign: .plus, exponent: -24, significand: 1))
        #expect(Float16Bits.fromFloat(65504) == 0x7BFF)
        #expect(Float16Bits.fromFloat(65520) == 0x7C00)  // rounds to ∞
        #expect(Float16Bits.fromFloat(1 + Float(sign: .plus, exponent: -11, significand: 1)) == 0x3C00)  // tie → even
        #expect(Float16Bits.fromFloat(1 + 3 * Float(sign: .plus, exponent: -11, significand: 1)) == 0x3C02)  // tie → even
        #expect(Float16Bits.toFloat(Float16Bits.fromFloat(.nan)).isNaN)
    }
}

// MARK: - Views

@Suite struct TensorViewTests {
    @Test func reshapeOfAContiguousTensorIsAView() {
        let x = Tensor(shape: [2, 3, 4], values: (0..<24).map(Float.init))
        let view = x.reshaped([6, 4])
        #expect(view.sharesMemory(with: x) && view.isContiguous)
        x.floatPointer[5] = 99
        #expect(view.toArray()[5] == 99)
    }

    @Test func transposeAndPermuteAreViews() {
        let x = Tensor(shape: [3, 4], values: (0..<12).map(Float.init))
        let t = x.transposed()
        #expect(t.sharesMemory(with: x))
        #expect(!t.isContiguous)
        #expect(t.shape == [4, 3] && t.strides == [1, 4])
        x.floatPointer[1] = -1  // x[0, 1] is t[1, 0]
        #expect(t.toArray()[3] == -1)
        let p = Tensor.zeros([2, 3, 4]).permuted([1, 0, 2])
        #expect(!p.isContiguous && p.strides == [4, 12, 1])
        // Axes of extent 1 do not break contiguity.
        #expect(Tensor.zeros([1, 4]).transposed().isContiguous)
        #expect(x.transposed().transposed().isContiguous)
    }

    @Test func slicesAreViews() {
        let x = Tensor(shape: [4, 3], values: (0..<12).map(Float.init))
        let rows = x.slice(axis: 0, 1..<3)
        #expect(rows.sharesMemory(with: x) && rows.isContiguous && rows.offset == 3)
        let columns = x.slice(axis: 1, 1..<3)
        #expect(columns.sharesMemory(with: x) && !columns.isContiguous && columns.offset == 1)
        #expect(x.slice(axis: 1, 0..<3).isContiguous)
        x.floatPointer[4] = 40
        #expect(rows.toArray()[1] == 40 && columns.toArray()[2] == 40)
        let parts = x.split(axis: 0, sizes: [1, 3])
        #expect(parts.allSatisfy { $0.sharesMemory(with: x) })
    }

    @Test func copiesDoNotShareMemory() {
        let x = Tensor(shape: [3, 4], values: (0..<12).map(Float.init))
        let reshapedTranspose = x.transposed().reshaped([12])
        #expect(!reshapedTranspose.sharesMemory(with: x) && reshapedTranspose.isContiguous)
        #expect(!x.copy().sharesMemory(with: x))
        #expect(!Tensor.concatenate([x, x], axis: 0).sharesMemory(with: x))
        #expect(x.contiguous() === x)
        #expect(!x.transposed().contiguous().sharesMemory(with: x))
        let detached = Tensor(shape: [2], values: [1, 2], requiresGrad: true).detached()
        #expect(!detached.requiresGrad)
    }

    @Test func broadcastIsAZeroStrideView() {
        let x = Tensor(shape: [3, 1], values: [1, 2, 3])
        let b = x.broadcast(to: [2, 3, 4])
        #expect(b.sharesMemory(with: x) && !b.isContiguous && b.strides == [0, 1, 0])
        #expect(b.toArray() == [1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3])
    }

    @Test func inPlaceHelpers() {
        let x = Tensor(shape: [2, 2], values: [1, 2, 3, 4])
        x.addInPlace(Tensor(shape: [2], values: [10, 20]))
        #expect(x.toArray() == [11, 22, 13, 24])
        x.addInPlace(Tensor.ones([2, 2]), scale: -2)
        #expect(x.toArray() == [9, 20, 11, 22])
        x.scaleInPlace(0.5)
        #expect(x.toArray() == [4.5, 10, 5.5, 11])
        x.fill(7)
        #expect(x.toArray() == [7, 7, 7, 7])
        let target = Tensor.zeros([3, 4])
        target.slice(axis: 1, 1..<3).assign(Tensor(shape: [3, 1], values: [1, 2, 3]))
        #expect(target.toArray() == [0, 1, 1, 0, 0, 2, 2, 0, 0, 3, 3, 0])
    }
}

// MARK: - Random numbers and dropout masks

@Suite struct PhiloxRandomTests {
    @Test func matchesRandom123KnownAnswers() {
        // Random123's kat_vectors for philox4x32-10: counter words (c0..c3), key words (k0, k1). Here the
        // 64-bit counter is (c1, c0), the stream is (c3, c2) and the seed is (k1, k0).
        let zero = PhiloxRandom(seed: 0, stream: 0).block(0)
        #expect([zero.0, zero.1, zero.2, zero.3] == [0x6627_E8D5, 0xE169_C58D, 0xBC57_AC4C, 0x9B00_DBD8])
        let ones = PhiloxRandom(seed: .max, stream: .max).block(.max)
        #expect([ones.0, ones.1, ones.2, ones.3] == [0x408F_276D, 0x41C8_3B0E, 0xA20B_C7C6, 0x6D54_51FD])
        let pi = PhiloxRandom(seed: 0x299F_31D0_A409_3822, stream: 0x0370_7344_1319_8A2E).block(0x85A3_08D3_243F_6A88)
        #expect([pi.0, pi.1, pi.2, pi.3] == [0xD16C_FE09, 0x94FD_CCEB, 0x5001_E420, 0x2412_6EA1])
    }

    @Test func valuesDependOnlyOnSeedStreamAndIndex() {
        let a = PhiloxRandom(seed: 17, stream: 3), b = PhiloxRandom(seed: 17, stream: 3)
        // Any order of access gives the same values.
        let forward = (0..<64).map { a.uniform(at: UInt64($0)) }
        let backward = (0..<64).reversed().map { b.uniform(at: UInt64($0)) }.reversed()
        #expect(forward == Array(backward))
        #expect(a.normal(at: 1_000_003) == b.normal(at: 1_000_003))
        let otherStream = (0..<64).map { PhiloxRandom(seed: 17, stream: 4).uniform(at: UInt64($0)) }
        let otherSeed = (0..<64).map { PhiloxRandom(seed: 18, stream: 3).uniform(at: UInt64($0)) }
        #expect(zip(forward, otherStream).filter { $0 == $1 }.count < 2)
        #expect(zip(forward, otherSeed).filter { $0 == $1 }.count < 2)
        // Uniform values are the block words' top 24 bits.
        let words = a.block(2)
        #expect(a.uniform(at: 9) == PhiloxRandom.unitFloat(words.1))
    }

    @Test func tensorsAreSlicesOfTheSameStream() {
        let long = Tensor.randomNormal([1000], seed: 9, stream: 2)
        let short = Tensor.randomNormal([2, 5], seed: 9, stream: 2)
        #expect(Array(long.toArray().prefix(10)) == short.toArray())
        let generator = PhiloxRandom(seed: 9, stream: 2)
        #expect(long.toArray()[777] == generator.normal(at: 777))
        let scaled = Tensor.randomNormal([10], mean: 3, std: 0.5, seed: 9, stream: 2).toArray()
        for (s, z) in zip(scaled, short.toArray()) { #expect(abs(s - (3 + 0.5 * z)) < 1e-6) }
        // The thread count does not change the values.
        let pooled = ComputePool.withPool(TestPools.three) { Tensor.randomNormal([10_000], seed: 9, stream: 2) }
        let single = ComputePool.withPool(TestPools.one) { Tensor.randomNormal([10_000], seed: 9, stream: 2) }
        #expect(pooled.toArray() == single.toArray())
    }

    @Test func normalSamplesHaveMeanZeroAndStandardDeviationOne() {
        let n = 100_000
        let x = Tensor.randomNormal([n], seed: 2024, stream: 1).toArray().map(Double.init)
        #expect(x.allSatisfy { $0.isFinite })
        let mean = x.reduce(0, +) / Double(n)
        let variance = x.reduce(0) { $0 + ($1 - mean) * ($1 - mean) } / Double(n - 1)
        // Standard errors: mean 1/√n ≈ 0.0032, standard deviation ≈ 1/√(2n) ≈ 0.0022; bounds ≈ 5σ.
        #expect(abs(mean) < 0.016, "mean \(mean)")
        #expect(abs(variance.squareRoot() - 1) < 0.011, "std \(variance.squareRoot())")
        // Shape, not just moments: P(|z| > 2) = 0.0455 (standard error 0.00066), P(z > 0) = 0.5 (0.0016).
        let tails = Double(x.filter { abs($0) > 2 }.count) / Double(n)
        #expect(abs(tails - 0.0455) < 0.0035, "tail fraction \(tails)")
        let positive = Double(x.filter { $0 > 0 }.count) / Double(n)
        #expect(abs(positive - 0.5) < 0.008, "positive fraction \(positive)")
    }

    @Test func uniformSamplesStayInRange() {
        let n = 100_000
        let u = Tensor.randomUniform([n], low: -2, high: 3, seed: 31, stream: 7).toArray()
        #expect(u.allSatisfy { $0 >= -2 && $0 < 3 })
        let mean = u.reduce(0.0) { $0 + Double($1) } / Double(n)
        // Standard error 5/√12/√n ≈ 0.0046.
        #expect(abs(mean - 0.5) < 0.025, "mean \(mean)")
        let lowQuarter = Double(u.filter { $0 < -0.75 }.count) / Double(n)
        #expect(abs(lowQuarter - 0.25) < 0.007)
    }

    @Test func streamIdentifiersAreStable() {
        // FNV-1a 64 reference values.
        #expect(PhiloxRandom.streamID("") == 0xCBF2_9CE4_8422_2325)
        #expect(PhiloxRandom.streamID("a") == 0xAF63_DC4C_8601_EC8C)
        #expect(PhiloxRandom.streamID("foobar") == 0x8594_4171_F739_67E8)
        #expect(PhiloxRandom.mix(1, 2) == PhiloxRandom.mix(1, 2))
        #expect(PhiloxRandom.mix(1, 2) != PhiloxRandom.mix(2, 1))
        #expect(PhiloxRandom.mix(1) != PhiloxRandom.mix(1, 0))
    }

    @Test func dropoutMasksAreIndependentOfTheBatchSplit() {
        let key = DropoutKey(seed: 99, step: 4, layer: 2, site: 1, firstSequence: 0)
        let x = TestData.awayFromZero([4, 6], seed: 401)
        let whole = Tensor.dropout(x, probability: 0.4, key: key).toArray()
        var firstKey = key, secondKey = key
        firstKey.firstSequence = 0
        secondKey.firstSequence = 2
        let first = Tensor.dropout(x.slice(axis: 0, 0..<2), probability: 0.4, key: firstKey).toArray()
        let second = Tensor.dropout(x.slice(axis: 0, 2..<4), probability: 0.4, key: secondKey).toArray()
        #expect(first + second == whole)
        #expect(whole.contains(0) && whole.contains { $0 != 0 })
        // Sequence by sequence, for a 3-D activation, and with a global offset (a later micro-batch).
        let y = TestData.awayFromZero([4, 2, 3], seed: 402)
        var offsetKey = key
        offsetKey.firstSequence = 8
        let wholeY = Tensor.dropout(y, probability: 0.4, key: offsetKey).toArray()
        var pieces: [Float] = []
        for s in 0..<4 {
            var k = key
            k.firstSequence = 8 + s
            pieces += Tensor.dropout(y.slice(axis: 0, s..<(s + 1)), probability: 0.4, key: k).toArray()
        }
        #expect(pieces == wholeY)
        // Using the wrong offset gives another mask.
        #expect(Tensor.dropout(x.slice(axis: 0, 2..<4), probability: 0.4, key: firstKey).toArray() != second)
    }
}

// MARK: - Compute pool and BLAS

@Suite struct ComputePoolTests {
    /// Runs parallelFor and returns the ranges it handed out, sorted.
    static func ranges(_ pool: ComputePool, count: Int, minimumChunk: Int) -> [Range<Int>] {
        let collected = Mutex<[Range<Int>]>([])
        pool.parallelFor(count, minimumChunk: minimumChunk) { range in collected.withLock { $0.append(range) } }
        return collected.withLock { $0 }.sorted { $0.lowerBound < $1.lowerBound }
    }

    @Test(arguments: [1, 2, 3])
    func parallelForCoversEveryIndexExactlyOnce(threads: Int) {
        let pool = TestPools.pool(threads: threads)
        #expect(pool.threadCount == threads)
        for count in [0, 1, 2, 3, 5, 17, 1000, 4097] {
            for minimumChunk in [1, 4, 64] {
                let ranges = Self.ranges(pool, count: count, minimumChunk: minimumChunk)
                var next = 0
                for range in ranges {
                    #expect(range.lowerBound == next && !range.isEmpty, "count \(count), chunk \(minimumChunk): \(ranges)")
                    next = range.upperBound
                }
                #expect(next == count, "count \(count), chunk \(minimumChunk): \(ranges)")
                #expect(ranges.count <= threads)
                if ranges.count > 1 { #expect(ranges.allSatisfy { $0.count >= minimumChunk }) }
            }
        }
    }

    @Test(arguments: [1, 2, 3])
    func runPartsRunsEachPartOnce(threads: Int) {
        let pool = TestPools.pool(threads: threads)
        let parts = Mutex<[Int]>([])
        pool.runParts { part in parts.withLock { $0.append(part) } }
        #expect(parts.withLock { $0 }.sorted() == Array(0..<threads))
    }

    @Test func nestedParallelForCompletesAndCoversEverything() {
        let outer = TestPools.three, other = TestPools.two
        let hits = Mutex([Int](repeating: 0, count: 8 * 5 * 2))
        outer.parallelFor(8) { rows in
            for i in rows {
                outer.parallelFor(5) { columns in
                    for j in columns { hits.withLock { $0[(i * 5 + j) * 2] += 1 } }
                }
                other.parallelFor(5) { columns in
                    for j in columns { hits.withLock { $0[(i * 5 + j) * 2 + 1] += 1 } }
                }
            }
        }
        #expect(hits.withLock { $0 }.allSatisfy { $0 == 1 })
    }

    @Test func concurrentSubmittersShareOnePool() {
        let pool = TestPools.three
        let totals = Mutex([Int](repeating: 0, count: 4))
        DispatchQueue.concurrentPerform(iterations: 4) { submitter in
            for _ in 0..<50 {
                let sum = Mutex(0)
                pool.parallelFor(100) { range in
                    let partial = range.reduce(0, +)
                    sum.withLock { $0 += partial }
                }
                totals.withLock { $0[submitter] += sum.withLock { $0 } }
            }
        }
        #expect(totals.withLock { $0 } == [Int](repeating: 50 * 4950, count: 4))
    }

    @Test func withPoolSelectsThePoolForThisThreadOnly() {
        let pool = TestPools.two
        #expect(ComputePool.current !== pool)
        ComputePool.withPool(pool) {
            #expect(ComputePool.current === pool)
            let inner = TestPools.one
            ComputePool.withPool(inner) { #expect(ComputePool.current === inner) }
            #expect(ComputePool.current === pool)
        }
        #expect(ComputePool.current !== pool)
        #expect(ComputePool.shared.threadCount >= 1)
        #expect(ComputePool(threadCount: 0).threadCount == 1)
    }
}

// SOURCE BUG (Sources/ConvoyTensor/Runtime/ComputePool.swift, `init`: `Thread { [unowned self] in
// self.workerLoop(index:) }`, and `deinit`): a worker thread turns its unowned reference into a strong one for
// the whole (endless) `workerLoop` call. Two consequences, in debug and release builds alike:
//  1. A pool released before all its worker threads have started running crashes the process: the late
//     worker reads the unowned reference after deinit has begun ("Attempted to read an unowned reference but
//     object … was already destroyed").
//  2. Once its workers have started, a pool is never freed: each worker keeps it alive, so `deinit` never runs
//     and every `ComputePool(threadCount: n)` leaks n − 1 threads (pools per rank, per test, per benchmark).
// Proposed fix: keep the shared state (mutex, condition variables, generation, job, shutdown flag) in a
// separate final class that the worker closures capture strongly, and never reference the pool object from
// the workers; the pool's deinit sets the shutdown flag on that state, broadcasts, and joins (or merely lets
// the workers exit on their own, since they then own the state).
@Suite struct ComputePoolLifetimeTests {
    @Test func poolReleasedRightAfterCreationDoesNotCrash() async {
        await #expect(processExitsWith: .success, "releasing a pool before its workers start traps (see SOURCE BUG above)") {
            for _ in 0..<300 { _ = ComputePool(threadCount: 3) }
        }
    }

    @Test func poolIsFreedAfterUse() {
        weak var released: ComputePool?
        do {
            let pool = ComputePool(threadCount: 2)
            pool.runParts { _ in }  // every worker has started
            released = pool
        }
        #expect(released == nil, "the pool (and its worker thread) leaked (see SOURCE BUG above)")
    }
}

@Suite struct BLASTests {
    struct GemmCase: Sendable, CustomTestStringConvertible {
        var m: Int, n: Int, k: Int
        var transposeA: Bool, transposeB: Bool
        var testDescription: String { "\(m)x\(n)x\(k) tA \(transposeA) tB \(transposeB)" }
    }

    /// Tall products split into row blocks, short wide ones into column blocks, one too small to split.
    static let cases: [GemmCase] = [(64, 48, 96), (70, 33, 64), (8, 256, 128), (5, 300, 100), (4, 4, 4)].flatMap { shape in
        [(false, false), (true, false), (false, true), (true, true)].map {
            GemmCase(m: shape.0, n: shape.1, k: shape.2, transposeA: $0.0, transposeB: $0.1)
        }
    }

    /// C (a [m, n] block at column 3 of an [m, n + 5] matrix, so ldc > n) = 0.5·op(A)·op(B) + 1·C.
    static func run(_ c: GemmCase, pool: ComputePool) -> [Float] {
        let a = TestData.uniform([c.m * c.k], seed: 501).toArray(), b = TestData.uniform([c.k * c.n], seed: 502).toArray()
        let ldc = c.n + 5
        var output = TestData.uniform([c.m * ldc], seed: 503).toArray()
        a.withUnsafeBufferPointer { pa in
            b.withUnsafeBufferPointer { pb in
                output.withUnsafeMutableBufferPointer { pc in
                    BLAS.sgemm(transposeA: c.transposeA, transposeB: c.transposeB, m: c.m, n: c.n, k: c.k, alpha: 0.5,
                               a: pa.baseAddress!, lda: c.transposeA ? c.m : c.k,
                               b: pb.baseAddress!, ldb: c.transposeB ? c.k : c.n,
                               beta: 1, c: pc.baseAddress! + 3, ldc: ldc, pool: pool)
                }
            }
        }
        return output
    }

    static func reference(_ c: GemmCase) -> [Double] {
        let aStored = TestData.uniform([c.m * c.k], seed: 501).doubles, bStored = TestData.uniform([c.k * c.n], seed: 502).doubles
        let a = c.transposeA ? Reference.transpose(aStored, rows: c.k, columns: c.m) : aStored
        let b = c.transposeB ? Reference.transpose(bStored, rows: c.n, columns: c.k) : bStored
        let product = Reference.matmul(a, b, m: c.m, k: c.k, n: c.n)
        let ldc = c.n + 5
        var output = TestData.uniform([c.m * ldc], seed: 503).doubles
        for i in 0..<c.m { for j in 0..<c.n { output[i * ldc + 3 + j] += 0.5 * product[i * c.n + j] } }
        return output
    }

    @Test(arguments: cases)
    func sgemmGivesTheSameResultOnOneAndThreeThreads(_ c: GemmCase) {
        let single = Self.run(c, pool: TestPools.one)
        let triple = Self.run(c, pool: TestPools.three)
        let expected = Self.reference(c)
        expectClose(single, expected, absolute: 1e-6 * Double(c.k), relative: 1e-5, "1 thread")
        expectClose(triple, expected, absolute: 1e-6 * Double(c.k), relative: 1e-5, "3 threads")
        // Blocks partition C: every element is computed by one single-threaded sgemm with the same inner
        // loop, so the results agree to rounding (and elements outside the block are untouched).
        expectClose(triple, single.map(Double.init), absolute: 1e-6, relative: 1e-6, "3 threads vs 1")
    }

    @Test func sgemmWithEmptyInnerDimensionScalesC() {
        var output: [Float] = [1, 2, 3, 4]
        let empty: [Float] = [0]
        empty.withUnsafeBufferPointer { p in
            output.withUnsafeMutableBufferPointer { c in
                BLAS.sgemm(transposeA: false, transposeB: false, m: 2, n: 2, k: 0, a: p.baseAddress!, lda: 1, b: p.baseAddress!, ldb: 2, beta: 0.5, c: c.baseAddress!, ldc: 2)
            }
        }
        #expect(output == [0.5, 1, 1.5, 2])
    }
}
