import ConvoyParallel
import ConvoyTensor
import Foundation

/// A token file (``TokenFileHeader`` then the ids) mapped into memory: windows are read straight from the
/// mapping, so a corpus whose tokens exceed RAM still trains, and nothing copies the whole file.
///
/// Opening checks the header and the checksum of every id, so a corrupt or truncated file is refused rather
/// than trained on.
public final class MappedTokenFile: Sendable {
    public let header: TokenFileHeader
    private let file: MappedFile

    /// The file's path.
    public var path: String { file.path }
    /// Number of token ids.
    public var count: Int { header.tokenCount }

    private init(header: TokenFileHeader, file: MappedFile) {
        self.header = header
        self.file = file
    }

    /// Maps and checks the token file at `path`.
    ///
    /// Throws ``ConvoyTensor/ConvoyError/malformedFile(path:reason:)`` when it is not a complete, intact token
    /// file, and ``ConvoyTensor/ConvoyError/io(_:)`` when it cannot be read.
    public convenience init(path: String) throws {
        switch try Self.open(path: path) {
        case .success(let opened): self.init(header: opened.header, file: opened.file)
        case .failure(.foreign): throw ConvoyError.malformedFile(path: path, reason: "not a Convoy token file (it does not start with \"CVYTOKEN\")")
        case .failure(.damaged(let reason)): throw ConvoyError.malformedFile(path: path, reason: reason)
        }
    }

    /// Maps `path` and checks it, telling a file Convoy did not write from a damaged one; throws only when it
    /// cannot be read at all.
    static func open(path: String) throws -> Result<MappedTokenFile, TokenFileHeader.Problem> {
        let file = try MappedFile(path: path)
        return file.withUnsafeBytes { bytes in
            switch TokenFileHeader.decode(bytes) {
            case .failure(let problem): return .failure(problem)
            case .success(let header):
                let ids = UnsafeRawBufferPointer(rebasing: bytes[header.byteCount...])
                guard PieceChecksum.compute(ids) == header.tokenChecksum else {
                    return .failure(.damaged("the checksum of its \(header.tokenCount) ids does not match the header (the ids are corrupt)"))
                }
                return .success(MappedTokenFile(header: header, file: file))
            }
        }
    }

    /// Ids `start ..< start + length`.
    public func tokens(from start: Int, count length: Int) -> [Int32] {
        precondition(start >= 0 && length >= 0 && start + length <= count, "tokens \(start)..<\(start + length) are outside 0..<\(count) of \(path)")
        guard length > 0 else { return [] }
        return file.withUnsafeBytes { bytes in
            let ids = bytes.baseAddress! + header.byteCount
            if header.tokenWidth == 2 {
                return (start..<(start + length)).map { Int32(UInt16(littleEndian: ids.loadUnaligned(fromByteOffset: $0 * 2, as: UInt16.self))) }
            }
            return (start..<(start + length)).map { Int32(bitPattern: UInt32(littleEndian: ids.loadUnaligned(fromByteOffset: $0 * 4, as: UInt32.self))) }
        }
    }
}
