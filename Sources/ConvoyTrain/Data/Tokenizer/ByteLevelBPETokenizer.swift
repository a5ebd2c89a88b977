import ConvoyTensor

/// Byte-level BPE, exactly as GPT-2 and Hugging Face `tokenizers` (`ByteLevel` pre-tokenizer + `BPE` model)
/// encode: added tokens are split off the raw text first, the rest is cut into pieces by GPT-2's pattern
/// (``GPT2PreTokenizer``), and each piece's bytes start as one symbol per byte and merge by rank
/// (``BytePairMerger``).
///
/// Beyond `tokenizers`, any bytes encode, including invalid UTF-8 (see ``GPT2PreTokenizer`` for how an
/// invalid byte is classified), and `decodeBytes(encode(bytes: b)) == b` for every `b`. The one exception
/// is an added token with `lstrip` or `rstrip` (RoBERTa's `<mask>`, not GPT-2's tokens): as in
/// `tokenizers`, it swallows the whitespace beside it, which decoding cannot restore. Load one with
/// ``TokenizerLoader/load(path:)``.
public struct ByteLevelBPETokenizer: TextTokenizer {
    /// A token matched in the raw text before pre-tokenisation (`added_tokens` of `tokenizer.json`).
    public struct AddedToken: Sendable, Equatable {
        public var content: String
        public var id: Int32
        public var special: Bool
        public var singleWord: Bool
        public var leftStrip: Bool
        public var rightStrip: Bool
        public var normalized: Bool

        public init(content: String, id: Int32, special: Bool = true, singleWord: Bool = false, leftStrip: Bool = false, rightStrip: Bool = false, normalized: Bool = false) {
            self.content = content
            self.id = id
            self.special = special
            self.singleWord = singleWord
            self.leftStrip = leftStrip
            self.rightStrip = rightStrip
            self.normalized = normalized
        }
    }

    /// The id of each byte's single-character token.
    private let byteIDs: [Int32]
    private let merges: BPEMergeTable
    /// The bytes each id decodes to (empty for ids the vocabulary does not use).
    private let tokenBytes: [[UInt8]]
    private let addedTokens: AddedTokenMatcher
    /// `use_regex` of the ByteLevel pre-tokenizer: when false, each text segment is one piece.
    private let splitsPieces: Bool
    /// `ignore_merges` of the BPE model: a piece that is itself in the vocabulary is that one token.
    private let wholePieceIDs: [[UInt8]: Int32]?

    public let vocabularySize: Int
    public let fingerprint: String
    public let endOfTextToken: Int32?

    /// A tokenizer from a vocabulary (byte-level token strings → ids), merges in rank order and added tokens.
    ///
    /// - Parameters:
    ///   - useRegex: `use_regex` of the ByteLevel pre-tokenizer (GPT-2: true).
    ///   - ignoreMerges: `ignore_merges` of the BPE model (GPT-2: false).
    ///   - fingerprint: the identity of the files this came from (``TextTokenizer/fingerprint``).
    ///   - source: the file named in error messages.
    /// - Throws: ``ConvoyError/malformedFile(path:reason:)`` when a merge names a token the vocabulary lacks,
    ///   the vocabulary lacks one of the 256 byte tokens, or ids are negative.
    public init(vocabulary: [String: Int], merges: [(String, String)], addedTokens: [AddedToken] = [], useRegex: Bool = true, ignoreMerges: Bool = false, fingerprint: String, source: String) throws {
        var maximumID = -1
        for (token, id) in vocabulary {
            guard id >= 0 && id < Int(Int32.max) else { throw ConvoyError.malformedFile(path: source, reason: "token \(token.debugDescription) has id \(id); ids must be between 0 and \(Int32.max - 1)") }
            maximumID = max(maximumID, id)
        }
        for token in addedTokens {
            guard token.id >= 0 else { throw ConvoyError.malformedFile(path: source, reason: "added token \(token.content.debugDescription) has negative id \(token.id)") }
            maximumID = max(maximumID, Int(token.id))
        }
        var byteIDs = [Int32](repeating: -1, count: 256)
        var missing: [String] = []
        for byte in 0..<256 {
            let token = ByteLevelAlphabet.token(ofBytes: [UInt8(byte)])
            if let id = vocabulary[token] { byteIDs[byte] = Int32(id) } else { missing.append("0x" + String(byte, radix: 16) + " (\(token))") }
        }
        guard missing.isEmpty else {
            throw ConvoyError.malformedFile(path: source, reason: "the vocabulary lacks the byte-level tokens of \(missing.count) bytes (\(missing.prefix(5).joined(separator: ", "))\(missing.count > 5 ? ", …" : "")); a byte-level BPE needs all 256 so that any text encodes")
        }
        var mergeList: [(left: Int32, right: Int32, merged: Int32)] = []
        mergeList.reserveCapacity(merges.count)
        for (line, (left, right)) in merges.enumerated() {
            guard let leftID = vocabulary[left], let rightID = vocabulary[right], let mergedID = vocabulary[left + right] else {
                let absent = [left, right, left + right].first { vocabulary[$0] == nil }!
                throw ConvoyError.malformedFile(path: source, reason: "merge \(line + 1) (\(left.debugDescription) + \(right.debugDescription)) needs the token \(absent.debugDescription), which the vocabulary lacks")
            }
            mergeList.append((Int32(leftID), Int32(rightID), Int32(mergedID)))
        }
        var tokenBytes = [[UInt8]](repeating: [], count: maximumID + 1)
        for (token, id) in vocabulary {
            // As `tokenizers`' ByteLevel decoder: a token with a character outside the table is its UTF-8.
            tokenBytes[id] = ByteLevelAlphabet.bytes(ofToken: token) ?? Array(token.utf8)
        }
        // Added tokens decode to their text, which is what matched them.
        for token in addedTokens { tokenBytes[Int(token.id)] = Array(token.content.utf8) }
        if ignoreMerges {
            var whole: [[UInt8]: Int32] = [:]
            for (token, id) in vocabulary { if let bytes = ByteLevelAlphabet.bytes(ofToken: token) { whole[bytes] = Int32(id) } }
            wholePieceIDs = whole
        } else {
            wholePieceIDs = nil
        }
        self.byteIDs = byteIDs
        self.merges = BPEMergeTable(merges: mergeList)
        self.tokenBytes = tokenBytes
        self.addedTokens = AddedTokenMatcher(tokens: addedTokens)
        self.splitsPieces = useRegex
        self.vocabularySize = maximumID + 1
        self.fingerprint = fingerprint
        self.endOfTextToken = addedTokens.first { $0.content == "<|endoftext|>" }?.id ?? vocabulary["<|endoftext|>"].map { Int32($0) }
    }

    public func encode(bytes: [UInt8]) -> [Int32] {
        var output: [Int32] = []
        output.reserveCapacity(bytes.count / 3 + 16)
        var cache = BPEPieceCache()
        var merger = BytePairMerger()
        bytes.withUnsafeBufferPointer { buffer in
            byteIDs.withUnsafeBufferPointer { byteIDs in
                forEachPiece(buffer) { piece, addedID in
                    if let addedID { output.append(addedID) } else { encodePiece(buffer, piece, byteIDs, &cache, &merger, &output) }
                }
            }
        }
        return output
    }

    /// Calls `body` for each added token (its range and id) and each piece of the text between (its range
    /// and nil), in order.
    @inline(__always)
    private func forEachPiece(_ buffer: UnsafeBufferPointer<UInt8>, _ body: (Range<Int>, Int32?) -> Void) {
        GPT2PreTokenizer.withClassTable { classes in
            addedTokens.forEachSegment(buffer, 0..<buffer.count) { segment, addedID in
                if let addedID {
                    body(segment, addedID)
                    return
                }
                var start = segment.lowerBound
                while start < segment.upperBound {
                    let end = splitsPieces ? GPT2PreTokenizer.pieceEnd(buffer, from: start, to: segment.upperBound, classes: classes) : segment.upperBound
                    body(start..<end, nil)
                    start = end
                }
            }
        }
    }

    /// The ids of the piece `bytes[range]`, from the cache or by merging.
    @inline(__always)
    private func encodePiece(_ bytes: UnsafeBufferPointer<UInt8>, _ range: Range<Int>, _ byteIDs: UnsafeBufferPointer<Int32>, _ cache: inout BPEPieceCache, _ merger: inout BytePairMerger, _ output: inout [Int32]) {
        if range.count == 1 {
            output.append(byteIDs[Int(bytes[range.lowerBound])])
            return
        }
        if let wholePieceIDs, let id = wholePieceIDs[Array(bytes[range])] {
            output.append(id)
            return
        }
        let cacheable = range.count <= BPEPieceCache.maximumPieceLength
        let hash = cacheable ? BPEPieceCache.hash(bytes, range) : 0
        if cacheable && cache.appendIDs(of: bytes, range, hash: hash, to: &output) { return }
        let first = output.count
        merger.merge(bytes, range, byteIDs: byteIDs, merges: merges, into: &output)
        if cacheable { cache.insert(bytes, range, hash: hash, ids: output[first...]) }
    }

    /// The ids of `bytes` with every piece merged by one method (the flat scan or the heap), for tests that
    /// check the two agree.
    public func encode(bytes: [UInt8], mergingWithHeap useHeap: Bool) -> [Int32] {
        var output: [Int32] = []
        var merger = BytePairMerger()
        bytes.withUnsafeBufferPointer { buffer in
            byteIDs.withUnsafeBufferPointer { byteIDs in
                forEachPiece(buffer) { piece, addedID in
                    if let addedID { output.append(addedID) } else { merger.merge(buffer, piece, byteIDs: byteIDs, merges: merges, useHeap: useHeap, into: &output) }
                }
            }
        }
        return output
    }

    /// Ids outside the vocabulary decode to nothing, as in `tokenizers`.
    public func decodeBytes(_ tokens: [Int32]) -> [UInt8] {
        var output: [UInt8] = []
        output.reserveCapacity(tokens.count * 4)
        for token in tokens where token >= 0 && Int(token) < tokenBytes.count { output.append(contentsOf: tokenBytes[Int(token)]) }
        return output
    }

    /// The pieces GPT-2's pattern cuts `bytes` into (no added-token splitting), for tests and tools.
    public static func preTokenize(_ bytes: [UInt8]) -> [Range<Int>] {
        bytes.withUnsafeBufferPointer { buffer in
            var pieces: [Range<Int>] = []
            var start = 0
            while start < buffer.count {
                let end = GPT2PreTokenizer.withClassTable { GPT2PreTokenizer.pieceEnd(buffer, from: start, to: buffer.count, classes: $0) }
                pieces.append(start..<end)
                start = end
            }
            return pieces
        }
    }

    /// Whether `bytes[position...]` could start with an added token or `position` is inside one (see
    /// ``safeCut(in:near:)``).
    func addedTokenTouches(_ bytes: UnsafeBufferPointer<UInt8>, at position: Int) -> Bool {
        addedTokens.touches(bytes, at: position)
    }

    var splitsIntoPieces: Bool { splitsPieces }
}
