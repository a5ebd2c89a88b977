import ConvoyTensor
import Testing

/// The SIMD buffer conversions agree with the scalar ``BFloat16`` conversion bit for bit.
@Suite struct BFloat16ConversionTests {
    /// Ties (even and odd), values that round up into the next binade or to infinity, subnormals, zeros,
    /// infinities and NaNs with both signs — more than 16 of them, so the SIMD body and the tail both run.
    static let special: [Float] = [
        0, -0, 1, -1, .infinity, -.infinity, .nan, -.nan, Float(bitPattern: 0x7F80_0001), Float(bitPattern: 0xFFBF_FFFF),
        Float(bitPattern: 0x3F80_8000), Float(bitPattern: 0x3F81_8000), Float(bitPattern: 0x3F80_8001), Float(bitPattern: 0x3F80_7FFF),
        Float(bitPattern: 0x3FFF_FFFF), .greatestFiniteMagnitude, -.greatestFiniteMagnitude, Float(bitPattern: 0x7F7F_8000),
        .leastNonzeroMagnitude, .leastNormalMagnitude, Float(bitPattern: 0x0000_8000), Float(bitPattern: 0x8001_8000),
    ]

    @Test(arguments: [1, 2])
    func roundMatchesTheScalarConversion(threads: Int) {
        let random = Tensor.randomUniform([100_003], low: -1e4, high: 1e4, seed: 9, stream: 1).toArray()
        let values = Self.special + random
        var rounded = [BFloat16](repeating: BFloat16(bitPattern: 0), count: values.count)
        values.withUnsafeBufferPointer { source in
            rounded.withUnsafeMutableBufferPointer { destination in
                BFloat16.round(source.baseAddress!, to: destination.baseAddress!, count: values.count, pool: TestPools.pool(threads: threads))
            }
        }
        let mismatches = zip(values, rounded).filter { BFloat16($0.0).bitPattern != $0.1.bitPattern }
        #expect(mismatches.isEmpty, "first mismatches: \(mismatches.prefix(4).map { ($0.0.bitPattern, $0.1.bitPattern) })")
        #expect(rounded[6].floatValue.isNaN && rounded[8].floatValue.isNaN && rounded[9].floatValue.isNaN, "NaNs stay NaN")
        #expect(rounded[17].floatValue == .infinity, "the largest Float rounds to infinity")
    }

    @Test func widenIsExact() {
        let patterns = (0..<70_000).map { BFloat16(bitPattern: UInt16(truncatingIfNeeded: $0 &* 40_503)) }
        var widened = [Float](repeating: 0, count: patterns.count)
        patterns.withUnsafeBufferPointer { source in
            widened.withUnsafeMutableBufferPointer { destination in
                BFloat16.widen(source.baseAddress!, to: destination.baseAddress!, count: patterns.count, pool: TestPools.two)
            }
        }
        #expect(zip(patterns, widened).allSatisfy { $0.0.floatValue.bitPattern == $0.1.bitPattern })
    }
}
