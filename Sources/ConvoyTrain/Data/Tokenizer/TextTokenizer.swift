/// Turns text (any bytes, valid UTF-8 or not) into token ids and back.
///
/// The byte tokenizer (every byte one token) is the default; a byte-level BPE such as GPT-2's is the other
/// kind. Datasets, the token cache, generation and fine-tuning see tokenizers only through this protocol.
public protocol TextTokenizer: Sendable {
    /// Number of token ids, special tokens included; the model's vocabulary must be at least this large.
    var vocabularySize: Int { get }

    /// The ids of `bytes`. Any byte sequence encodes, including invalid UTF-8.
    func encode(bytes: [UInt8]) -> [Int32]

    /// The bytes of `tokens`: `decodeBytes(encode(bytes: b)) == b` for every `b`.
    func decodeBytes(_ tokens: [Int32]) -> [UInt8]

    /// A stable identity of the tokenizer's contents (for example a hash of its files), so caches of encoded
    /// text are keyed by the tokenizer that made them.
    var fingerprint: String { get }

    /// The id that separates documents (`<|endoftext|>` for GPT-2), when the tokenizer has one.
    var endOfTextToken: Int32? { get }

    /// An index `i` with `offset ≤ i ≤ bytes.count` at which the text can be cut so that encoding
    /// `bytes[..<i]` and `bytes[i...]` separately gives exactly the ids of encoding all of `bytes`.
    ///
    /// Parallel tokenisation cuts a corpus at such points. The answer should be close to `offset` (within a
    /// few kilobytes for ordinary text); `bytes.count` is always a valid, if useless, answer.
    func safeCut(in bytes: UnsafeBufferPointer<UInt8>, near offset: Int) -> Int
}

extension TextTokenizer {
    /// The ids of a string's UTF-8 bytes.
    public func encode(_ text: String) -> [Int32] { encode(bytes: Array(text.utf8)) }

    /// The text of `tokens` (invalid UTF-8 sequences become U+FFFD).
    public func decode(_ tokens: [Int32]) -> String { String(decoding: decodeBytes(tokens), as: UTF8.self) }
}
