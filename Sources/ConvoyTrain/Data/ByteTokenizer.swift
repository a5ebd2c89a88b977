/// Byte-level tokenizer: every UTF-8 byte is one token (vocabulary 256), so any text round-trips exactly.
public struct ByteTokenizer: Sendable {
    /// Number of distinct tokens.
    public static let vocabularySize = 256

    public init() {}

    /// The tokens of a string's UTF-8 bytes.
    public func encode(_ text: String) -> [Int32] { text.utf8.map { Int32($0) } }

    /// Tokens of raw bytes.
    public func encode(bytes: [UInt8]) -> [Int32] { bytes.map { Int32($0) } }

    /// The text of tokens (invalid UTF-8 sequences become U+FFFD).
    public func decode(_ tokens: [Int32]) -> String {
        String(decoding: tokens.map { UInt8(truncatingIfNeeded: $0) }, as: UTF8.self)
    }
}
