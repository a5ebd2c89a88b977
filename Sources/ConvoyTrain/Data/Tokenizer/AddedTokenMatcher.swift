/// Finds added tokens (special tokens such as `<|endoftext|>`) in raw text before pre-tokenisation, as
/// `tokenizers`' `AddedVocabulary` does: tokens with `normalized: false` are matched first, then those with
/// `normalized: true` in the text between (Convoy has no normalizer, so both see the raw text); within a
/// pass, matches are non-overlapping and leftmost-longest (Aho–Corasick's `LeftmostLongest`). `single_word`,
/// `lstrip` and `rstrip` behave as in `tokenizers`.
struct AddedTokenMatcher: Sendable {
    /// One added token as `tokenizer.json` describes it.
    struct Pattern: Sendable {
        var bytes: [UInt8]
        var id: Int32
        var singleWord: Bool
        var leftStrip: Bool
        var rightStrip: Bool
    }

    /// The passes (non-normalized tokens, then normalized ones), each with the first bytes of its patterns.
    private let passes: [(patterns: [Pattern], firstBytes: [Bool])]

    /// The added tokens' bytes, for ``touches(_:at:)``.
    private let allPatterns: [[UInt8]]

    init(tokens: [ByteLevelBPETokenizer.AddedToken]) {
        var passes: [(patterns: [Pattern], firstBytes: [Bool])] = []
        for normalized in [false, true] {
            let patterns = tokens.filter { $0.normalized == normalized && !$0.content.isEmpty }.map {
                Pattern(bytes: Array($0.content.utf8), id: $0.id, singleWord: $0.singleWord, leftStrip: $0.leftStrip, rightStrip: $0.rightStrip)
            }
            guard !patterns.isEmpty else { continue }
            var firstBytes = [Bool](repeating: false, count: 256)
            for pattern in patterns { firstBytes[Int(pattern.bytes[0])] = true }
            passes.append((patterns, firstBytes))
        }
        self.passes = passes
        allPatterns = tokens.map { Array($0.content.utf8) }.filter { !$0.isEmpty }
    }

    /// Calls `body` for each segment of `bytes[range]` in order: `(segment, id)` for an added token and
    /// `(segment, nil)` for text between them.
    func forEachSegment(_ bytes: UnsafeBufferPointer<UInt8>, _ range: Range<Int>, _ body: (Range<Int>, Int32?) -> Void) {
        split(bytes, range, pass: 0, body)
    }

    /// Whether some occurrence of an added token covers, starts or ends at `position` (a cut there could
    /// change which added tokens match, or how they strip).
    func touches(_ bytes: UnsafeBufferPointer<UInt8>, at position: Int) -> Bool {
        for pattern in allPatterns {
            let length = pattern.count
            var start = max(0, position - length)
            while start <= position && start + length <= bytes.count {
                if matches(pattern, bytes, at: start) { return true }
                start += 1
            }
        }
        return false
    }

    private func split(_ bytes: UnsafeBufferPointer<UInt8>, _ range: Range<Int>, pass: Int, _ body: (Range<Int>, Int32?) -> Void) {
        guard !range.isEmpty else { return }
        guard pass < passes.count else { body(range, nil); return }
        let (patterns, firstBytes) = passes[pass]
        var segmentStart = range.lowerBound
        var position = range.lowerBound
        while position < range.upperBound {
            guard firstBytes[Int(bytes[position])], let found = longestMatch(patterns, bytes, at: position, end: range.upperBound) else {
                position += 1
                continue
            }
            let pattern = patterns[found]
            let matchEnd = position + pattern.bytes.count
            defer { position = matchEnd }
            var start = position, stop = matchEnd
            if start < segmentStart { continue }  // overlaps the previous token's right strip
            if pattern.singleWord {
                let wordBefore = start > range.lowerBound && Self.isWordCharacter(Self.characterBefore(bytes, start, lowerBound: range.lowerBound))
                let wordAfter = stop < range.upperBound && Self.isWordCharacter(GPT2PreTokenizer.character(bytes, at: stop, end: range.upperBound))
                if wordBefore || wordAfter { continue }
            }
            if pattern.leftStrip {
                while start > segmentStart {
                    let before = Self.characterBefore(bytes, start, lowerBound: range.lowerBound)
                    guard before.characterClass.isWhitespace else { break }
                    start -= before.length
                }
                start = max(start, segmentStart)
            }
            if pattern.rightStrip {
                while stop < range.upperBound {
                    let after = GPT2PreTokenizer.character(bytes, at: stop, end: range.upperBound)
                    guard after.characterClass.isWhitespace else { break }
                    stop += after.length
                }
            }
            split(bytes, segmentStart..<start, pass: pass + 1, body)
            body(start..<stop, pattern.id)
            segmentStart = stop
        }
        split(bytes, segmentStart..<range.upperBound, pass: pass + 1, body)
    }

    private func longestMatch(_ patterns: [Pattern], _ bytes: UnsafeBufferPointer<UInt8>, at position: Int, end: Int) -> Int? {
        var best: Int?
        for (index, pattern) in patterns.enumerated() where position + pattern.bytes.count <= end {
            if let current = best, patterns[current].bytes.count >= pattern.bytes.count { continue }
            if matches(pattern.bytes, bytes, at: position) { best = index }
        }
        return best
    }

    private func matches(_ pattern: [UInt8], _ bytes: UnsafeBufferPointer<UInt8>, at start: Int) -> Bool {
        for (offset, byte) in pattern.enumerated() where bytes[start + offset] != byte { return false }
        return true
    }

    /// The character that ends at `position` (a character boundary), decoding no further back than `lowerBound`.
    static func characterBefore(_ bytes: UnsafeBufferPointer<UInt8>, _ position: Int, lowerBound: Int) -> GPT2PreTokenizer.Character {
        for back in 2...4 where position - back >= lowerBound {
            let start = position - back
            guard GPT2PreTokenizer.isCharacterBoundary(bytes, start) else { continue }
            let decoded = GPT2PreTokenizer.character(bytes, at: start, end: position)
            if decoded.length == back { return decoded }
            break
        }
        return GPT2PreTokenizer.character(bytes, at: position - 1, end: position)
    }

    /// Rust's `char::is_alphanumeric`, which `single_word` tests on the neighbouring characters.
    private static func isWordCharacter(_ character: GPT2PreTokenizer.Character) -> Bool {
        guard character.length > 1 || character.scalar < 0x80, let scalar = Unicode.Scalar(character.scalar) else { return false }
        if scalar.properties.isAlphabetic { return true }
        switch scalar.properties.generalCategory {
        case .decimalNumber, .letterNumber, .otherNumber: return true
        default: return false
        }
    }
}
