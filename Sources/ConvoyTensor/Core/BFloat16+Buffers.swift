/// Whole-buffer conversions between Float32 and BFloat16, 16 lanes at a time, split over a pool.
extension BFloat16 {
    /// Rounds `count` Float32 values to BFloat16, ties to even, exactly as ``init(_:)`` does element by
    /// element (NaN stays a quiet NaN with its sign; overflow rounds to infinity).
    public static func round(
        _ source: UnsafePointer<Float>, to destination: UnsafeMutablePointer<BFloat16>, count: Int,
        pool: ComputePool? = ComputePool.current
    ) {
        let output = UnsafeMutableRawPointer(destination).assumingMemoryBound(to: UInt16.self)
        forEachChunk(count, pool: pool) { range in
            var i = range.lowerBound
            while i + 16 <= range.upperBound {
                let bits = UnsafeRawPointer(source + i).loadUnaligned(as: SIMD16<UInt32>.self)
                let result = SIMD16<UInt16>(truncatingIfNeeded: roundedHalves(bits))
                UnsafeMutableRawPointer(output + i).storeBytes(of: result, as: SIMD16<UInt16>.self)
                i += 16
            }
            while i < range.upperBound { destination[i] = BFloat16(source[i]); i += 1 }
        }
    }

    /// Rounds `count` Float32 values to the nearest BFloat16 and stores them widened back to Float32: the
    /// values ``round(_:to:count:pool:)`` then ``widen(_:to:count:pool:)`` give, in one pass (the bf16 GEMM's
    /// operands where the GEMM itself computes in fp32).
    public static func roundToFloat(
        _ source: UnsafePointer<Float>, to destination: UnsafeMutablePointer<Float>, count: Int,
        pool: ComputePool? = ComputePool.current
    ) {
        forEachChunk(count, pool: pool) { range in
            var i = range.lowerBound
            while i + 16 <= range.upperBound {
                let bits = UnsafeRawPointer(source + i).loadUnaligned(as: SIMD16<UInt32>.self)
                UnsafeMutableRawPointer(destination + i).storeBytes(of: roundedHalves(bits) &<< 16, as: SIMD16<UInt32>.self)
                i += 16
            }
            while i < range.upperBound { destination[i] = BFloat16(source[i]).floatValue; i += 1 }
        }
    }

    /// The BFloat16 bit patterns (in the low halves) nearest to 16 Float32 bit patterns, ties to even.
    @inline(__always)
    private static func roundedHalves(_ bits: SIMD16<UInt32>) -> SIMD16<UInt32> {
        let rounded = (bits &+ (0x7FFF &+ ((bits &>> 16) & 1))) &>> 16
        // NaN: exponent all ones and a non-zero mantissa; rounding could carry it into infinity. The mask is
        // computed with integer arithmetic, not a lane comparison: Swift's SIMD16 comparison and `replacing`
        // compiled to a lane-by-lane loop through memory on x86-64's baseline, a quarter of a bf16 step's time.
        // 0x7F80_0000 − |bits| wraps (sets bit 31) exactly when |bits| > 0x7F80_0000.
        let isNaN = SIMD16<UInt32>.zero &- ((0x7F80_0000 &- (bits & 0x7FFF_FFFF)) &>> 31)
        return (rounded & ~isNaN) | (((bits &>> 16) | 0x0040) & isNaN)
    }

    /// Widens `count` BFloat16 values to Float32 (exact).
    public static func widen(
        _ source: UnsafePointer<BFloat16>, to destination: UnsafeMutablePointer<Float>, count: Int,
        pool: ComputePool? = ComputePool.current
    ) {
        let input = UnsafeRawPointer(source).assumingMemoryBound(to: UInt16.self)
        forEachChunk(count, pool: pool) { range in
            var i = range.lowerBound
            while i + 16 <= range.upperBound {
                let half = UnsafeRawPointer(input + i).loadUnaligned(as: SIMD16<UInt16>.self)
                let bits = SIMD16<UInt32>(truncatingIfNeeded: half) &<< 16
                UnsafeMutableRawPointer(destination + i).storeBytes(of: bits, as: SIMD16<UInt32>.self)
                i += 16
            }
            while i < range.upperBound { destination[i] = source[i].floatValue; i += 1 }
        }
    }

    /// Conversions are memory-bound: split only buffers large enough to pay for the dispatch.
    private static func forEachChunk(_ count: Int, pool: ComputePool?, _ body: (Range<Int>) -> Void) {
        guard count > 0 else { return }
        if let pool { pool.parallelFor(count, minimumChunk: 1 << 15, body) } else { body(0..<count) }
    }
}
