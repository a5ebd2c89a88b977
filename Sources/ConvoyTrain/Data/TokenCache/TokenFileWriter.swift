import ConvoyNN
import ConvoyParallel
import ConvoyTensor
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Writes a token file at a new path: ids are appended as they are encoded (so memory holds only the chunks
/// in flight), then ``finish()`` checksums them, writes the header and fsyncs. The caller renames the
/// finished file into place; until then nothing reads it.
final class TokenFileWriter {
    let path: String
    private let descriptor: Int32
    private var header: TokenFileHeader
    private var finished = false

    /// Creates `path` (which must not exist) for the ids of a corpus of `corpusLength` bytes hashing to
    /// `corpusHash`, tokenised by a tokenizer with `fingerprint` and `vocabularySize` ids.
    init(path: String, corpusLength: Int, corpusHash: UInt64, fingerprint: String, vocabularySize: Int) throws {
        self.path = path
        header = TokenFileHeader(tokenWidth: TokenFileHeader.tokenWidth(vocabularySize: vocabularySize), tokenCount: 0,
                                 corpusLength: corpusLength, corpusHash: corpusHash, tokenChecksum: 0, fingerprint: fingerprint)
        descriptor = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o644)
        guard descriptor >= 0 else { throw ConvoyError.io("cannot create the token file \(path): \(String(cString: strerror(errno)))") }
        // A placeholder of the header's final size; the real one is written once the ids are counted.
        try write(header.encoded())
    }

    deinit { close(descriptor) }

    /// Appends `tokens` (each must fit the header's width).
    func append(_ tokens: [Int32]) throws {
        header.tokenCount += tokens.count
        var bytes = [UInt8]()
        bytes.reserveCapacity(tokens.count * header.tokenWidth)
        for token in tokens {
            let value = UInt32(bitPattern: token)
            bytes.append(UInt8(value & 0xFF))
            bytes.append(UInt8((value >> 8) & 0xFF))
            if header.tokenWidth == 4 {
                bytes.append(UInt8((value >> 16) & 0xFF))
                bytes.append(UInt8(value >> 24))
            }
        }
        try write(bytes)
    }

    /// Checksums the ids, writes the header and fsyncs the file.
    func finish() throws -> TokenFileHeader {
        precondition(!finished, "a token file is finished once")
        finished = true
        header.tokenChecksum = try MappedFile(path: path).withUnsafeBytes { PieceChecksum.compute(UnsafeRawBufferPointer(rebasing: $0[header.byteCount...])) }
        try write(header.encoded(), at: 0)
        guard fsync(descriptor) == 0 else { throw ConvoyError.io("cannot fsync the token file \(path): \(String(cString: strerror(errno)))") }
        return header
    }

    private var offset = 0

    private func write(_ bytes: [UInt8], at position: Int? = nil) throws {
        let start = position ?? offset
        try bytes.withUnsafeBytes { raw in
            var done = 0
            while done < raw.count {
                let result = pwrite(descriptor, raw.baseAddress! + done, raw.count - done, off_t(start + done))
                if result < 0 && errno == EINTR { continue }
                guard result > 0 else { throw ConvoyError.io("cannot write the token file \(path): \(String(cString: strerror(errno)))") }
                done += result
            }
        }
        if position == nil { offset += bytes.count }
    }
}
