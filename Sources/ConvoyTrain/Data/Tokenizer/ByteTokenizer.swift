/// Byte-level tokenizer: every byte is one token (vocabulary 256), so any text round-trips exactly.
public struct ByteTokenizer: TextTokenizer {
    /// Number of distinct tokens.
    public static let vocabularySize = 256

    public init() {}

    public var vocabularySize: Int { Self.vocabularySize }

    /// Tokens of raw bytes.
    public func encode(bytes: [UInt8]) -> [Int32] { bytes.map { Int32($0) } }

    public func decodeBytes(_ tokens: [Int32]) -> [UInt8] { tokens.map { UInt8(truncatingIfNeeded: $0) } }

    public var fingerprint: String { "bytes" }

    /// Bytes have no document separator.
    public var endOfTextToken: Int32? { nil }

    /// Every position is a token boundary.
    public func safeCut(in bytes: UnsafeBufferPointer<UInt8>, near offset: Int) -> Int { min(max(offset, 0), bytes.count) }
}
