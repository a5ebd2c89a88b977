import ConvoyParallel
import Foundation

/// The header of a token file (``MappedTokenFile``): what the tokens are, what they were made from, and the
/// checksums that tell a complete file from a corrupt or truncated one.
///
/// Layout (little-endian), then the ids at ``byteCount``, each ``tokenWidth`` bytes:
///
///     0   magic "CVYTOKEN"
///     8   version (UInt32, 1)
///     12  bytes per token (UInt32: 2 when the vocabulary fits 16 bits, else 4)
///     16  token count (UInt64)
///     24  corpus length in bytes (UInt64)
///     32  corpus hash (UInt64, PieceChecksum of the corpus bytes)
///     40  token checksum (UInt64, PieceChecksum of the token bytes)
///     48  header checksum (UInt64, PieceChecksum of the header with this field zero)
///     56  fingerprint length (UInt32), 4 bytes zero
///     64  the tokenizer's fingerprint (UTF-8), zero-padded to a multiple of 8
public struct TokenFileHeader: Equatable, Sendable {
    public static let magic = Array("CVYTOKEN".utf8)
    public static let version: UInt32 = 1
    static let fixedBytes = 64

    /// Bytes per token id: 2 or 4.
    public var tokenWidth: Int
    public var tokenCount: Int
    public var corpusLength: Int
    public var corpusHash: UInt64
    public var tokenChecksum: UInt64
    /// The ``TextTokenizer/fingerprint`` of the tokenizer that made the ids.
    public var fingerprint: String

    /// The width ids of a vocabulary of `size` tokens need.
    public static func tokenWidth(vocabularySize size: Int) -> Int { size <= 1 << 16 ? 2 : 4 }

    /// Bytes of the header, where the ids begin (a multiple of 8, so ids are aligned in a mapped file).
    public var byteCount: Int { Self.fixedBytes + (fingerprint.utf8.count + 7) / 8 * 8 }

    /// The header's bytes, its checksum filled in.
    public func encoded() -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: byteCount)
        func put<Value: FixedWidthInteger>(_ value: Value, at offset: Int) {
            withUnsafeBytes(of: value.littleEndian) { raw in
                for (index, byte) in raw.enumerated() { bytes[offset + index] = byte }
            }
        }
        bytes.replaceSubrange(0..<8, with: Self.magic)
        put(Self.version, at: 8)
        put(UInt32(tokenWidth), at: 12)
        put(UInt64(tokenCount), at: 16)
        put(UInt64(corpusLength), at: 24)
        put(corpusHash, at: 32)
        put(tokenChecksum, at: 40)
        put(UInt32(fingerprint.utf8.count), at: 56)
        bytes.replaceSubrange(64..<(64 + fingerprint.utf8.count), with: Array(fingerprint.utf8))
        put(bytes.withUnsafeBytes { PieceChecksum.compute($0) }, at: 48)
        return bytes
    }

    /// Why a file's bytes are not a token file: not one at all (no magic), or one that is damaged.
    public enum Problem: Error, Equatable {
        /// The file does not start with the magic: Convoy did not write it.
        case foreign
        /// A token file that is truncated, corrupt or of another version.
        case damaged(String)
    }

    /// Reads and checks the header at the start of `file` (the whole mapped file): magic, version, width,
    /// header checksum, and that the file holds exactly the ids the header counts. The ids' checksum is
    /// checked by ``MappedTokenFile``.
    public static func decode(_ file: UnsafeRawBufferPointer) -> Result<TokenFileHeader, Problem> {
        guard file.count >= 8, Array(file[0..<8]) == magic else { return .failure(.foreign) }
        guard file.count >= fixedBytes else { return .failure(.damaged("it is \(file.count) bytes, shorter than the \(fixedBytes)-byte header")) }
        func load<Value: FixedWidthInteger>(_ offset: Int, as type: Value.Type) -> Value {
            Value(littleEndian: file.loadUnaligned(fromByteOffset: offset, as: Value.self))
        }
        let version = load(8, as: UInt32.self)
        guard version == Self.version else { return .failure(.damaged("it has format version \(version); this Convoy writes version \(Self.version)")) }
        let fingerprintLength = Int(load(56, as: UInt32.self))
        let headerLength = fixedBytes + (fingerprintLength + 7) / 8 * 8
        guard headerLength <= file.count else { return .failure(.damaged("its header (\(headerLength) bytes) runs past the end of the file (\(file.count) bytes)")) }
        var zeroed = Array(file[0..<headerLength])
        zeroed.replaceSubrange(48..<56, with: [UInt8](repeating: 0, count: 8))
        guard zeroed.withUnsafeBytes({ PieceChecksum.compute($0) }) == load(48, as: UInt64.self) else {
            return .failure(.damaged("its header checksum does not match (the header is corrupt)"))
        }
        let width = Int(load(12, as: UInt32.self))
        guard width == 2 || width == 4 else { return .failure(.damaged("it stores \(width)-byte ids; token files hold 2- or 4-byte ids")) }
        let header = TokenFileHeader(tokenWidth: width, tokenCount: Int(load(16, as: UInt64.self)), corpusLength: Int(load(24, as: UInt64.self)),
                                     corpusHash: load(32, as: UInt64.self), tokenChecksum: load(40, as: UInt64.self),
                                     fingerprint: String(decoding: file[64..<(64 + fingerprintLength)], as: UTF8.self))
        let expected = header.byteCount + header.tokenCount * width
        guard file.count == expected else {
            return .failure(.damaged("it is \(file.count) bytes but its header counts \(header.tokenCount) ids (\(expected) bytes in all): it was \(file.count < expected ? "truncated" : "extended")"))
        }
        return .success(header)
    }
}
