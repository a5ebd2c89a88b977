/// Vectorised transcendental functions on 8 floats at a time, accurate to a few ulps, used by the kernels
/// (softmax, GELU, tanh). Polynomials after Cephes' `expf`.
public enum VectorMath {
    public typealias Vector = SIMD8<Float>

    /// e^x, with inputs clamped to the finite range of Float.
    @inline(__always)
    public static func exp(_ input: Vector) -> Vector {
        // Clamp with compare-and-select: the generic `clamped` is not inlined into this hot loop.
        let low = Vector(repeating: -87.3), high = Vector(repeating: 88.3)
        let x = input.replacing(with: low, where: input .< low).replacing(with: high, where: input .> high)
        // Split x = n·ln2 + r with |r| ≤ ln2/2.
        var n = floor(x * 1.442_695_04 + 0.5)
        var r = x - n * 0.693_359_375
        r = r - n * -2.121_944_4e-4
        var y = Vector(repeating: 1.987_569_15e-4)
        y = y * r + 1.398_199_95e-3
        y = y * r + 8.333_451_9e-3
        y = y * r + 4.166_579_59e-2
        y = y * r + 1.666_666_55e-1
        y = y * r + 5.000_000_12e-1
        y = y * (r * r) + r + 1
        // 2^n through the exponent bits: the magic constant 1.5·2^23 puts n in the low mantissa bits.
        n = n + 12_582_912
        let integer = unsafeBitCast(n, to: SIMD8<Int32>.self) &- 0x4B40_0000
        let scale = unsafeBitCast((integer &+ 127) &<< 23, to: Vector.self)
        return y * scale
    }

    /// ⌊x⌋ for |x| < 2^22 (exp's argument range), exactly as `rounded(.down)`: the generic `rounded` calls
    /// `floorf` once per lane on x86-64's baseline (no SSE4.1 `roundps`), which made exp — and so GELU and
    /// softmax — several times slower. Adding and subtracting 1.5·2^23 rounds to the nearest integer in the
    /// vector unit; one subtraction where that went up gives the floor.
    @inline(__always)
    public static func floor(_ x: Vector) -> Vector {
        let magic = Vector(repeating: 12_582_912)
        let nearest = (x + magic) - magic
        return nearest - Vector(repeating: 1).replacing(with: 0, where: nearest .<= x)
    }

    /// tanh(x) = 1 − 2 / (e^{2x} + 1).
    @inline(__always)
    public static func tanh(_ x: Vector) -> Vector {
        let e = exp(x * 2)
        return 1 - 2 / (e + 1)
    }

    /// Scalar e^x with the same accuracy as the vector form (for loop tails).
    @inline(__always)
    public static func exp(_ x: Float) -> Float { exp(Vector(repeating: x))[0] }

    /// Scalar tanh with the same accuracy as the vector form.
    @inline(__always)
    public static func tanh(_ x: Float) -> Float { tanh(Vector(repeating: x))[0] }

    /// Loads 8 floats from `pointer`.
    @inline(__always)
    public static func load(_ pointer: UnsafePointer<Float>) -> Vector {
        UnsafeRawPointer(pointer).loadUnaligned(as: Vector.self)
    }

    /// Stores 8 floats to `pointer`.
    @inline(__always)
    public static func store(_ value: Vector, _ pointer: UnsafeMutablePointer<Float>) {
        UnsafeMutableRawPointer(pointer).storeBytes(of: value, as: Vector.self)
    }

    /// Sum of `count` floats (8 lanes of partial sums).
    @inline(__always)
    public static func sum(_ pointer: UnsafePointer<Float>, _ count: Int) -> Float {
        var accumulator = Vector.zero
        var i = 0
        while i + 8 <= count { accumulator += load(pointer + i); i += 8 }
        var total = accumulator.sum()
        while i < count { total += pointer[i]; i += 1 }
        return total
    }

    /// Dot product of two float arrays.
    @inline(__always)
    public static func dot(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ count: Int) -> Float {
        var accumulator = Vector.zero
        var i = 0
        while i + 8 <= count { accumulator += load(a + i) * load(b + i); i += 8 }
        var total = accumulator.sum()
        while i < count { total += a[i] * b[i]; i += 1 }
        return total
    }

    /// Largest of `count` floats (count ≥ 1).
    @inline(__always)
    public static func max(_ pointer: UnsafePointer<Float>, _ count: Int) -> Float {
        var i = 0
        var result = -Float.infinity
        if count >= 8 {
            var accumulator = load(pointer)
            i = 8
            while i + 8 <= count {
                let next = load(pointer + i)
                accumulator = accumulator.replacing(with: next, where: next .> accumulator)
                i += 8
            }
            result = accumulator.max()
        }
        while i < count { result = Swift.max(result, pointer[i]); i += 1 }
        return result
    }
}
