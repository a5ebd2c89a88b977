/// The checksum of a checkpoint piece's bytes: FNV-1a's multiply-xor step over 64-bit little-endian words in
/// four interleaved lanes (so the loop is not one long dependency chain and runs near memory speed), the
/// lanes and the length folded together at the end; a tail shorter than a word is zero-padded. It detects
/// corruption (bit flips, truncation, misplaced bytes), not tampering.
public enum PieceChecksum {
    /// The name recorded in a checkpoint index.
    public static let algorithm = "fnv1a64x4"

    /// The checksum of `bytes`, as 16 hexadecimal digits.
    public static func hex(_ bytes: UnsafeRawBufferPointer) -> String {
        let value = compute(bytes)
        let digits = String(value, radix: 16)
        return String(repeating: "0", count: 16 - digits.count) + digits
    }

    /// The checksum of `bytes` as a number (``hex(_:)`` writes it out).
    public static func compute(_ bytes: UnsafeRawBufferPointer) -> UInt64 {
        let prime: UInt64 = 0x0000_0100_0000_01B3
        var lanes: (UInt64, UInt64, UInt64, UInt64) = (0xCBF2_9CE4_8422_2325, 0x84222325CBF29CE4, 0x9CE484222325CBF2, 0x2325CBF29CE48422)
        let words = bytes.count / 8
        var index = 0
        if let base = bytes.baseAddress {
            while index + 4 <= words {
                lanes.0 = (lanes.0 ^ base.loadUnaligned(fromByteOffset: index * 8, as: UInt64.self)) &* prime
                lanes.1 = (lanes.1 ^ base.loadUnaligned(fromByteOffset: index * 8 + 8, as: UInt64.self)) &* prime
                lanes.2 = (lanes.2 ^ base.loadUnaligned(fromByteOffset: index * 8 + 16, as: UInt64.self)) &* prime
                lanes.3 = (lanes.3 ^ base.loadUnaligned(fromByteOffset: index * 8 + 24, as: UInt64.self)) &* prime
                index += 4
            }
            while index < words {
                lanes.0 = (lanes.0 ^ base.loadUnaligned(fromByteOffset: index * 8, as: UInt64.self)) &* prime
                index += 1
            }
            var tail: UInt64 = 0
            for byte in stride(from: bytes.count - 1, through: words * 8, by: -1) { tail = tail << 8 | UInt64(bytes[byte]) }
            lanes.1 = (lanes.1 ^ tail) &* prime
        }
        var result = lanes.0
        for lane in [lanes.1, lanes.2, lanes.3, UInt64(bytes.count)] { result = (result ^ lane) &* prime }
        return result
    }
}
