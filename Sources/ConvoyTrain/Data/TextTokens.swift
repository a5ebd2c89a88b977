/// The token ids a ``TextDataset`` draws its windows from: a file's bytes held in memory (the byte tokenizer,
/// every byte one id), or a memory-mapped token file of the token cache.
public enum TextTokens: Sendable {
    case bytes([UInt8])
    case mapped(MappedTokenFile)

    /// Number of ids.
    public var count: Int {
        switch self {
        case .bytes(let bytes): return bytes.count
        case .mapped(let file): return file.count
        }
    }

    /// Ids `start ..< start + length`.
    public func window(from start: Int, count length: Int) -> [Int32] {
        switch self {
        case .bytes(let bytes): return bytes[start..<(start + length)].map { Int32($0) }
        case .mapped(let file): return file.tokens(from: start, count: length)
        }
    }
}
