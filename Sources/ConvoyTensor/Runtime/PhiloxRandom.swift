import Foundation

/// A counter-based random generator (Philox-4x32-10, Salmon et al., SC'11).
///
/// The n-th random block depends only on (seed, stream, n), never on how many numbers were drawn before,
/// so any rank can reproduce any slice of any initialisation or dropout mask without drawing the rest.
public struct PhiloxRandom: Sendable, Hashable {
    /// The 64-bit key.
    public let seed: UInt64
    /// A second 64-bit word that separates independent streams (a parameter, a dropout site).
    public let stream: UInt64

    /// Creates a generator for one (seed, stream) pair.
    public init(seed: UInt64, stream: UInt64 = 0) {
        self.seed = seed
        self.stream = stream
    }

    /// The four 32-bit words of block `counter`.
    @inlinable
    public func block(_ counter: UInt64) -> (UInt32, UInt32, UInt32, UInt32) {
        var c0 = UInt32(truncatingIfNeeded: counter), c1 = UInt32(truncatingIfNeeded: counter >> 32)
        var c2 = UInt32(truncatingIfNeeded: stream), c3 = UInt32(truncatingIfNeeded: stream >> 32)
        var k0 = UInt32(truncatingIfNeeded: seed), k1 = UInt32(truncatingIfNeeded: seed >> 32)
        for _ in 0..<10 {
            let product0 = UInt64(0xD251_1F53) &* UInt64(c0)
            let product1 = UInt64(0xCD9E_8D57) &* UInt64(c2)
            let hi0 = UInt32(truncatingIfNeeded: product0 >> 32), lo0 = UInt32(truncatingIfNeeded: product0)
            let hi1 = UInt32(truncatingIfNeeded: product1 >> 32), lo1 = UInt32(truncatingIfNeeded: product1)
            (c0, c1, c2, c3) = (hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0)
            k0 = k0 &+ 0x9E37_79B9
            k1 = k1 &+ 0xBB67_AE85
        }
        return (c0, c1, c2, c3)
    }

    /// A uniform Float in [0, 1) from a 32-bit word (24 random mantissa bits).
    @inlinable
    public static func unitFloat(_ word: UInt32) -> Float {
        Float(word >> 8) * (1.0 / 16_777_216.0)
    }

    /// The i-th uniform value in [0, 1) of this stream.
    @inlinable
    public func uniform(at index: UInt64) -> Float {
        let words = block(index / 4)
        switch index % 4 {
        case 0: return Self.unitFloat(words.0)
        case 1: return Self.unitFloat(words.1)
        case 2: return Self.unitFloat(words.2)
        default: return Self.unitFloat(words.3)
        }
    }

    /// The i-th standard normal value of this stream (Box–Muller on block i/2).
    @inlinable
    public func normal(at index: UInt64) -> Float {
        let words = block(index / 2)
        let useFirstPair = index % 2 == 0
        let u1 = (Double(useFirstPair ? words.0 : words.2) + 1) / 4_294_967_297.0
        let u2 = Double(useFirstPair ? words.1 : words.3) / 4_294_967_296.0
        return Float((-2 * Foundation.log(u1)).squareRoot() * Foundation.cos(2 * Double.pi * u2))
    }

    /// A stable 64-bit hash of a string (FNV-1a), for deriving streams from names such as parameter names.
    public static func streamID(_ text: String) -> UInt64 {
        var hash: UInt64 = 0xCBF2_9CE4_8422_2325
        for byte in text.utf8 {
            hash ^= UInt64(byte)
            hash = hash &* 0x0000_0100_0000_01B3
        }
        return hash
    }

    /// Mixes several words into one stream identifier (SplitMix64 finaliser per word).
    public static func mix(_ words: UInt64...) -> UInt64 {
        var state: UInt64 = 0x9E37_79B9_7F4A_7C15
        for word in words {
            var z = state ^ (word &+ 0x9E37_79B9_7F4A_7C15)
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            state = z ^ (z >> 31)
        }
        return state
    }
}
