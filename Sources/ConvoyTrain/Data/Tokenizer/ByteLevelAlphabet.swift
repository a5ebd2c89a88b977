/// GPT-2's byte-to-character table: byte-level BPE vocabularies spell every byte as one printable character,
/// so a token string such as `"Ġthe"` stands for the bytes `" the"`.
///
/// The printable bytes `!`…`~`, `¡`…`¬` and `®`…`ÿ` stand for themselves; the other 68 bytes (controls, the
/// space, DEL, NBSP, soft hyphen) take the characters U+0100, U+0101, … in byte order. This is
/// `bytes_to_unicode` of GPT-2's `encoder.py` and the table of `tokenizers`' ByteLevel pre-tokenizer.
public enum ByteLevelAlphabet {
    /// The character (Unicode scalar value) that stands for each byte.
    public static let characterOfByte: [UInt32] = {
        var table = [UInt32](repeating: 0, count: 256)
        var next: UInt32 = 256
        for byte in 0..<256 {
            if standsForItself(UInt8(byte)) {
                table[byte] = UInt32(byte)
            } else {
                table[byte] = next
                next += 1
            }
        }
        return table
    }()

    /// The byte a character stands for, or nil when the character is not in the table.
    public static func byte(ofCharacter scalar: UInt32) -> UInt8? {
        if scalar < 256 { return standsForItself(UInt8(scalar)) ? UInt8(scalar) : nil }
        let index = Int(scalar) - 256
        return index < nonPrintableBytes.count ? nonPrintableBytes[index] : nil
    }

    /// The bytes a byte-level token string stands for, or nil when one of its characters is not in the table.
    public static func bytes(ofToken token: String) -> [UInt8]? {
        var result: [UInt8] = []
        result.reserveCapacity(token.unicodeScalars.count)
        for scalar in token.unicodeScalars {
            guard let byte = byte(ofCharacter: scalar.value) else { return nil }
            result.append(byte)
        }
        return result
    }

    /// The byte-level spelling of `bytes` (for messages and tests).
    public static func token(ofBytes bytes: some Sequence<UInt8>) -> String {
        var text = String.UnicodeScalarView()
        for byte in bytes { text.append(Unicode.Scalar(characterOfByte[Int(byte)])!) }
        return String(text)
    }

    private static func standsForItself(_ byte: UInt8) -> Bool {
        (0x21...0x7E).contains(byte) || (0xA1...0xAC).contains(byte) || (0xAE...0xFF).contains(byte)
    }

    /// The bytes spelled U+0100, U+0101, …, in order.
    private static let nonPrintableBytes: [UInt8] = (0..<256).map { UInt8($0) }.filter { !standsForItself($0) }
}
