/// GPT-2's pre-tokenisation: the text is cut into pieces by the pattern
///
///     's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
///
/// matched leftmost-first from each piece's end, as `tokenizers` (Oniguruma) and GPT-2's `encoder.py` do,
/// and BPE then runs inside each piece. This is a hand-written matcher over bytes: no regex engine and no
/// `String`s in the loop.
///
/// What the pattern means, alternative by alternative, at a piece start `i`:
/// - an ASCII apostrophe followed by `s`, `t`, `m`, `d` (two characters) or `re`, `ve`, `ll` (three), lower
///   case only;
/// - else an optional U+0020 space and a maximal run of letters (`\p{L}`), of numbers (`\p{N}`) or of other
///   non-whitespace characters, the class taken from the first character after the optional space;
/// - else a whitespace run: all of it when it ends the text or is one character, otherwise all but its last
///   character (`\s+(?!\S)` backtracks one character so that the last whitespace character, typically a
///   space, can start the next word's piece); `\s+` then takes a lone whitespace character.
///
/// `\s` is Unicode White_Space (what Oniguruma uses: tab, LF, VT, FF, CR, space, U+0085, U+00A0, U+1680,
/// U+2000–U+200A, U+2028, U+2029, U+202F, U+205F, U+3000; not U+001C–U+001F, unlike Python's `str.isspace`).
/// Letters and numbers are general categories L* and N* as Swift's Unicode tables give them, so a character
/// assigned in a Unicode version newer than one library knows may classify differently in the other.
///
/// Invalid UTF-8: `tokenizers` only encodes valid strings. Convoy encodes any bytes: each byte that is not
/// part of a valid UTF-8 sequence (decoded strictly, as Rust and Python do: no overlongs, surrogates or values
/// above U+10FFFF) counts as one character of the "other" class, the class of U+FFFD, which is what it would
/// become after lossy decoding. Its byte goes into the piece unchanged, so decoding gives the input back.
public enum GPT2PreTokenizer {
    /// The character classes the pattern distinguishes.
    public enum CharacterClass: UInt8, Sendable {
        /// U+0020, the only character the ` ?` prefixes accept.
        case space
        /// Other White_Space characters.
        case whitespace
        /// `\p{L}`.
        case letter
        /// `\p{N}`.
        case number
        /// Everything else, including invalid bytes.
        case other

        var isWhitespace: Bool { self == .space || self == .whitespace }
    }

    /// One decoded character: its scalar value (or the byte, for an invalid byte), its length in bytes and class.
    struct Character {
        var scalar: UInt32
        var length: Int
        var characterClass: CharacterClass
    }

    /// The class of a Unicode scalar value.
    public static func characterClass(of scalar: UInt32) -> CharacterClass {
        if scalar < 0x10000 { return CharacterClass(rawValue: basicPlaneClasses[Int(scalar)])! }
        return computeClass(scalar)
    }

    /// The end of the piece that starts at `start`, within `bytes[start..<end]`.
    @inline(__always)
    static func pieceEnd(_ bytes: UnsafeBufferPointer<UInt8>, from start: Int, to end: Int, classes: UnsafeBufferPointer<UInt8>) -> Int {
        let first = character(bytes, at: start, end: end, classes: classes)
        if first.scalar == 0x27 {  // '
            let next = start + 1
            if next < end {
                switch bytes[next] {
                case 0x73, 0x74, 0x6D, 0x64: return next + 1  // s t m d
                case 0x72, 0x76:  // r v, then e
                    if next + 1 < end && bytes[next + 1] == 0x65 { return next + 2 }
                case 0x6C:  // l, then l
                    if next + 1 < end && bytes[next + 1] == 0x6C { return next + 2 }
                default: break
                }
            }
        }
        var runClass = first.characterClass
        var position = start + first.length
        if runClass == .space && position < end {
            let second = character(bytes, at: position, end: end, classes: classes)
            if !second.characterClass.isWhitespace {
                runClass = second.characterClass
                position += second.length
            }
        }
        if !runClass.isWhitespace {
            while position < end {
                let next = character(bytes, at: position, end: end, classes: classes)
                if next.characterClass != runClass { break }
                position += next.length
            }
            return position
        }
        // A whitespace run from `start`: all of it if it ends the text or is one character, else all but
        // its last character.
        var lastStart = start
        position = start + first.length
        while position < end {
            let next = character(bytes, at: position, end: end, classes: classes)
            if !next.characterClass.isWhitespace { return lastStart > start ? lastStart : position }
            lastStart = position
            position += next.length
        }
        return position
    }

    /// The character at `position` (which must be a character boundary) of `bytes[..<end]`, decoded strictly;
    /// a byte that starts no valid sequence is one character of class `.other`.
    @inline(__always)
    static func character(_ bytes: UnsafeBufferPointer<UInt8>, at position: Int, end: Int, classes: UnsafeBufferPointer<UInt8>) -> Character {
        let lead = bytes[position]
        if lead < 0x80 { return Character(scalar: UInt32(lead), length: 1, characterClass: CharacterClass(rawValue: classes[Int(lead)])!) }
        let invalid = Character(scalar: UInt32(lead), length: 1, characterClass: .other)
        @inline(__always) func continuation(_ offset: Int, _ low: UInt8 = 0x80, _ high: UInt8 = 0xBF) -> UInt32? {
            let index = position + offset
            guard index < end else { return nil }
            let byte = bytes[index]
            return byte >= low && byte <= high ? UInt32(byte & 0x3F) : nil
        }
        var scalar: UInt32
        var length: Int
        switch lead {
        case 0xC2...0xDF:
            guard let c1 = continuation(1) else { return invalid }
            scalar = UInt32(lead & 0x1F) << 6 | c1
            length = 2
        case 0xE0...0xEF:
            let low: UInt8 = lead == 0xE0 ? 0xA0 : 0x80, high: UInt8 = lead == 0xED ? 0x9F : 0xBF
            guard let c1 = continuation(1, low, high), let c2 = continuation(2) else { return invalid }
            scalar = UInt32(lead & 0x0F) << 12 | c1 << 6 | c2
            length = 3
        case 0xF0...0xF4:
            let low: UInt8 = lead == 0xF0 ? 0x90 : 0x80, high: UInt8 = lead == 0xF4 ? 0x8F : 0xBF
            guard let c1 = continuation(1, low, high), let c2 = continuation(2), let c3 = continuation(3) else { return invalid }
            scalar = UInt32(lead & 0x07) << 18 | c1 << 12 | c2 << 6 | c3
            length = 4
        default:
            return invalid
        }
        let characterClass = scalar < 0x10000 ? CharacterClass(rawValue: classes[Int(scalar)])! : computeClass(scalar)
        return Character(scalar: scalar, length: length, characterClass: characterClass)
    }

    /// ``character(_:at:end:classes:)`` with the class table looked up (outside hot loops).
    static func character(_ bytes: UnsafeBufferPointer<UInt8>, at position: Int, end: Int) -> Character {
        withClassTable { character(bytes, at: position, end: end, classes: $0) }
    }

    /// Calls `body` with the classes of U+0000–U+FFFF, which the hot loops take as an argument rather than
    /// reading a global (each read of a global checks its one-time initialisation).
    static func withClassTable<Result>(_ body: (UnsafeBufferPointer<UInt8>) -> Result) -> Result {
        basicPlaneClasses.withUnsafeBufferPointer(body)
    }

    /// Whether `position` starts a character in every decoding of text around it: a byte that is not a UTF-8
    /// continuation byte (0x80–0xBF) is never inside another character's sequence.
    @inline(__always)
    static func isCharacterBoundary(_ bytes: UnsafeBufferPointer<UInt8>, _ position: Int) -> Bool {
        position == 0 || position == bytes.count || bytes[position] & 0xC0 != 0x80
    }

    private static func computeClass(_ scalar: UInt32) -> CharacterClass {
        switch scalar {
        case 0x20: return .space
        case 0x09...0x0D, 0x85, 0xA0, 0x1680, 0x2000...0x200A, 0x2028, 0x2029, 0x202F, 0x205F, 0x3000: return .whitespace
        default: break
        }
        guard let value = Unicode.Scalar(scalar) else { return .other }
        switch value.properties.generalCategory {
        case .uppercaseLetter, .lowercaseLetter, .titlecaseLetter, .modifierLetter, .otherLetter: return .letter
        case .decimalNumber, .letterNumber, .otherNumber: return .number
        default: return .other
        }
    }

    /// Classes of U+0000–U+FFFF, looked up instead of Unicode's property tables in the hot loop.
    private static let basicPlaneClasses: [UInt8] = (0..<0x10000).map { computeClass(UInt32($0)).rawValue }
}
