/// The element types a tensor's storage can hold.
///
/// Compute kernels run in Float32. BFloat16 is a storage type (mixed precision, gradient compression):
/// convert with ``Tensor/converted(to:)`` before computing.
public enum DType: String, Sendable, CaseIterable, Codable {
    case float32
    case bfloat16

    /// Bytes per element.
    public var byteSize: Int {
        switch self {
        case .float32: return 4
        case .bfloat16: return 2
        }
    }
}

/// A 16-bit brain floating-point number: the upper half of an IEEE-754 Float32.
public struct BFloat16: Sendable, Hashable, CustomStringConvertible {
    /// The raw bit pattern.
    public var bitPattern: UInt16

    /// Creates a value from its raw bit pattern.
    public init(bitPattern: UInt16) { self.bitPattern = bitPattern }

    /// Rounds a Float32 to the nearest BFloat16 (ties to even); NaN stays NaN.
    @inlinable
    public init(_ value: Float) {
        let bits = value.bitPattern
        if value.isNaN {
            bitPattern = UInt16(truncatingIfNeeded: (bits >> 16) | 0x0040)
            return
        }
        let roundingBias: UInt32 = 0x7FFF + ((bits >> 16) & 1)
        bitPattern = UInt16(truncatingIfNeeded: (bits &+ roundingBias) >> 16)
    }

    /// The exact Float32 value.
    @inlinable
    public var floatValue: Float { Float(bitPattern: UInt32(bitPattern) << 16) }

    public var description: String { floatValue.description }
}

/// An IEEE-754 half-precision number, used only to read and write F16 safetensors.
public enum Float16Bits {
    /// Converts half-precision bits to Float32 exactly.
    public static func toFloat(_ h: UInt16) -> Float {
        let sign = UInt32(h & 0x8000) << 16
        let exponent = Int((h >> 10) & 0x1F)
        let mantissa = UInt32(h & 0x3FF)
        if exponent == 0 {
            if mantissa == 0 { return Float(bitPattern: sign) }
            // Subnormal half: value = mantissa * 2^-24.
            let magnitude = Float(mantissa) * Float(sign: .plus, exponent: -24, significand: 1)
            return sign != 0 ? -magnitude : magnitude
        }
        if exponent == 31 {
            return Float(bitPattern: sign | 0x7F80_0000 | (mantissa << 13))
        }
        return Float(bitPattern: sign | (UInt32(exponent - 15 + 127) << 23) | (mantissa << 13))
    }

    /// Converts a Float32 to half-precision bits, rounding to nearest even, saturating to infinity.
    public static func fromFloat(_ value: Float) -> UInt16 {
        let bits = value.bitPattern
        let sign = UInt16((bits >> 16) & 0x8000)
        if value.isNaN { return sign | 0x7E00 }
        let magnitude = abs(value)
        if magnitude >= 65520 { return sign | 0x7C00 }
        if magnitude < Float(sign: .plus, exponent: -25, significand: 1) { return sign }
        if magnitude < Float(sign: .plus, exponent: -14, significand: 1) {
            // Subnormal: round magnitude / 2^-24 to an integer, ties to even.
            let scaled = magnitude * Float(sign: .plus, exponent: 24, significand: 1)
            return sign | UInt16(scaled.rounded(.toNearestOrEven))
        }
        let exponent = Int((bits >> 23) & 0xFF) - 127 + 15
        var mantissa = bits & 0x7F_FFFF
        var halfExponent = UInt32(exponent)
        let roundBits = mantissa & 0x1FFF
        mantissa >>= 13
        if roundBits > 0x1000 || (roundBits == 0x1000 && (mantissa & 1) == 1) {
            mantissa += 1
            if mantissa == 0x400 { mantissa = 0; halfExponent += 1 }
        }
        if halfExponent >= 31 { return sign | 0x7C00 }
        return sign | UInt16(halfExponent << 10) | UInt16(mantissa)
    }
}
