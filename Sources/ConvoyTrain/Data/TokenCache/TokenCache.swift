import ConvoyNN
import ConvoyParallel
import ConvoyTensor
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// The directory of token files, one per (corpus, tokenizer): a corpus is tokenised once, and every later
/// run with the same text and tokenizer maps the file it left.
///
/// A file's name is the corpus hash, its length and the tokenizer fingerprint's hash, so a changed corpus or
/// tokenizer gets a new file. Files are written under a temporary name, fsynced and renamed into place. A
/// token file that is damaged (truncated, corrupt) is tokenised again, with a message; a file in the way that
/// Convoy did not write is never replaced or deleted.
public struct TokenCache: Sendable {
    /// The cache directory.
    public let directory: String

    /// `directory`, or the default: `$CONVOY_CACHE/tokens` when CONVOY_CACHE is set, else
    /// `$XDG_CACHE_HOME/convoy/tokens`, else `~/.cache/convoy/tokens`.
    public init(directory: String? = nil, environment: [String: String] = ProcessInfo.processInfo.environment) {
        self.directory = directory ?? Self.defaultDirectory(environment: environment)
    }

    /// The default cache directory for `environment`.
    public static func defaultDirectory(environment: [String: String]) -> String {
        if let root = environment["CONVOY_CACHE"], !root.isEmpty { return root + "/tokens" }
        if let root = environment["XDG_CACHE_HOME"], !root.isEmpty { return root + "/convoy/tokens" }
        return (environment["HOME"].flatMap { $0.isEmpty ? nil : $0 } ?? NSHomeDirectory()) + "/.cache/convoy/tokens"
    }

    /// The file name of the tokens of a corpus of `corpusLength` bytes hashing to `corpusHash`, by the
    /// tokenizer with `fingerprint`.
    public static func fileName(corpusHash: UInt64, corpusLength: Int, fingerprint: String) -> String {
        let tokenizerHash = Array(fingerprint.utf8).withUnsafeBytes { PieceChecksum.hex($0) }
        return "\(hex(corpusHash))-\(corpusLength)-\(tokenizerHash).tokens"
    }

    private static func hex(_ value: UInt64) -> String {
        let digits = String(value, radix: 16)
        return String(repeating: "0", count: 16 - digits.count) + digits
    }

    /// How the tokens were obtained, for a message.
    public enum Origin: Sendable, Equatable {
        /// An intact token file was already in the cache.
        case cached
        /// The corpus was tokenised into a new file.
        case tokenised
        /// The cached file was damaged (the reason) and the corpus was tokenised again.
        case rebuilt(String)
    }

    /// The mapped tokens of the corpus at `corpusPath` under `tokenizer`: the cached file when it is intact,
    /// else a new one made by `threads` threads (``ParallelTokenization``). `progress` gets (bytes encoded,
    /// corpus bytes) while tokenising.
    ///
    /// Throws ``ConvoyTensor/ConvoyError/io(_:)`` when the corpus cannot be read or the cache written, and
    /// when a file Convoy did not write sits where the token file belongs.
    public func tokens(corpus corpusPath: String, tokenizer: any TextTokenizer, threads: Int, chunkBytes: Int = 1 << 20,
                       progress: (Int, Int) throws -> Void = { _, _ in }) throws -> (tokens: MappedTokenFile, origin: Origin) {
        let corpus = try MappedFile(path: corpusPath)
        corpus.adviseSequential()
        let corpusHash = corpus.withUnsafeBytes { PieceChecksum.compute($0) }
        let path = directory + "/" + Self.fileName(corpusHash: corpusHash, corpusLength: corpus.count, fingerprint: tokenizer.fingerprint)
        var origin = Origin.tokenised
        if FileManager.default.fileExists(atPath: path) {
            switch try MappedTokenFile.open(path: path) {
            case .success(let cached) where cached.header.corpusHash == corpusHash && cached.header.corpusLength == corpus.count
                && cached.header.fingerprint == tokenizer.fingerprint:
                return (cached, .cached)
            case .success:
                origin = .rebuilt("its header names another corpus or tokenizer")
            case .failure(.damaged(let reason)):
                origin = .rebuilt(reason)
            case .failure(.foreign):
                throw ConvoyError.io("\(path) is in the token cache's place but is not a Convoy token file; Convoy will not replace it. Move it away, or choose another cache with --token-cache")
            }
        }
        do {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        } catch {
            throw ConvoyError.io("cannot create the token cache directory \(directory): \(RunDirectory.reason(error)); choose another with --token-cache or CONVOY_CACHE")
        }
        let temporary = directory + "/." + URL(fileURLWithPath: path).lastPathComponent + ".tmp-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        defer { unlink(temporary) }
        let writer = try TokenFileWriter(path: temporary, corpusLength: corpus.count, corpusHash: corpusHash,
                                         fingerprint: tokenizer.fingerprint, vocabularySize: tokenizer.vocabularySize)
        try corpus.withUnsafeBytes { raw in
            let bytes = raw.bindMemory(to: UInt8.self)
            try ParallelTokenization(tokenizer: tokenizer, threads: threads, chunkBytes: chunkBytes)
                .encode(bytes, emit: { try writer.append($0) }, progress: { try progress($0, bytes.count) })
        }
        _ = try writer.finish()
        guard rename(temporary, path) == 0 else {
            throw ConvoyError.io("cannot move the token file \(temporary) to \(path): \(String(cString: strerror(errno)))")
        }
        try AtomicFile.syncDirectory(directory)
        return (try MappedTokenFile(path: path), origin)
    }
}
