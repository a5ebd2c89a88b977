extension ByteLevelBPETokenizer {
    /// The first position at or after `offset` where the text can be cut without changing any id.
    ///
    /// A cut at `i` is safe when, with `c1` the character ending at `i` and `c2` the one starting there:
    /// - `c1` is not whitespace, and either `c2` is whitespace, or `c1` and `c2` are of different classes
    ///   (letter, number, other) and `c1` is not an apostrophe; and
    /// - no occurrence of an added token covers, starts at or ends at `i`.
    ///
    /// Why this is a boundary of GPT-2's pattern, identical for the prefix, the suffix and the whole text:
    /// the piece containing `c1` ends at `i`, because no alternative continues from a non-whitespace
    /// character into whitespace (the space of ` ?X+` only leads), a run `X+` stops where the class changes,
    /// and a contraction crosses `i` only when `c1` is its apostrophe (excluded) or `c1`, `c2` are both
    /// letters (same class). Every match before `i` examines at most the character at `i`, and only to see
    /// that it ends a run or fails a contraction, which the end of the prefix does as well. The pattern has no
    /// look-behind, so matching from `i` in the whole text is matching the suffix from its start. Decoding
    /// agrees too: a position whose byte is not a continuation byte starts a character in every decoding, so
    /// the scan resynchronises there, and an invalid byte is one character in both. Added tokens are matched
    /// before pre-tokenisation; when none touches `i`, the leftmost-longest matches of the prefix and the
    /// suffix are those of the whole text, and no strip or single-word test looks across `i`. BPE runs
    /// within pieces, so equal pieces give equal ids.
    ///
    /// Text without such a position (one unbroken run of letters, or `use_regex: false`) has no safe cut
    /// before its end; the answer is then `bytes.count`.
    public func safeCut(in bytes: UnsafeBufferPointer<UInt8>, near offset: Int) -> Int {
        if offset <= 0 { return 0 }
        guard splitsIntoPieces else { return bytes.count }
        var position = max(offset, 1)
        guard position < bytes.count else { return bytes.count }
        while position < bytes.count && !GPT2PreTokenizer.isCharacterBoundary(bytes, position) { position += 1 }
        guard position < bytes.count else { return bytes.count }
        return GPT2PreTokenizer.withClassTable { classes in
            // The character at the first boundary is the first `c1`; its predecessor is not needed.
            var previous = GPT2PreTokenizer.character(bytes, at: position, end: bytes.count, classes: classes)
            position += previous.length
            while position < bytes.count {
                let current = GPT2PreTokenizer.character(bytes, at: position, end: bytes.count, classes: classes)
                let boundary = !previous.characterClass.isWhitespace
                    && (current.characterClass.isWhitespace || (current.characterClass != previous.characterClass && previous.scalar != 0x27))
                if boundary && !addedTokenTouches(bytes, at: position) { return position }
                previous = current
                position += current.length
            }
            return bytes.count
        }
    }
}
