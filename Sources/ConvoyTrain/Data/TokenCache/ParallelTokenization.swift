import ConvoyTensor
import Foundation

/// Tokenises a corpus on several threads with exactly the ids of one serial `encode`: the corpus is cut at the
/// tokenizer's safe points (``TextTokenizer/chunkBoundaries(of:chunkBytes:)``) into chunks of about `chunkBytes`, chunks
/// are encoded in waves of a few per thread, and each wave's ids are handed on in corpus order — so memory
/// holds a wave of chunks, never the whole corpus's ids (``TextTokenizer/encodeInParallel(bytes:chunkBytes:pool:)``
/// is the in-memory form, for text already held in an array).
public struct ParallelTokenization {
    public let tokenizer: any TextTokenizer
    /// The threads that encode chunks (1: serial, the reference the parallel result equals).
    public let pool: ComputePool
    /// The size chunks are cut near.
    public let chunkBytes: Int

    /// Encodes on a pool of its own with `threads` threads.
    public init(tokenizer: any TextTokenizer, threads: Int, chunkBytes: Int = 1 << 20) {
        self.init(tokenizer: tokenizer, pool: ComputePool(threadCount: threads), chunkBytes: chunkBytes)
    }

    /// Encodes on `pool`'s threads.
    public init(tokenizer: any TextTokenizer, pool: ComputePool, chunkBytes: Int = 1 << 20) {
        self.tokenizer = tokenizer
        self.pool = pool
        self.chunkBytes = max(1, chunkBytes)
    }

    /// Threads that encode chunks.
    public var threads: Int { pool.threadCount }

    /// Encodes `corpus`, calling `emit` with the ids of consecutive parts in order (their concatenation is
    /// `tokenizer.encode(bytes: corpus)`) and `progress` with the bytes encoded so far after each part.
    public func encode(_ corpus: UnsafeBufferPointer<UInt8>, emit: ([Int32]) throws -> Void, progress: (Int) throws -> Void = { _ in }) rethrows {
        let boundaries = tokenizer.chunkBoundaries(of: corpus, chunkBytes: chunkBytes)
        let ranges = zip(boundaries, boundaries.dropFirst()).map { $0..<$1 }
        let wave = threads * 4
        var first = 0
        while first < ranges.count {
            let batch = Array(ranges[first..<min(first + wave, ranges.count)])
            var encoded = [[Int32]](repeating: [], count: batch.count)
            encoded.withUnsafeMutableBufferPointer { results in
                pool.parallelFor(batch.count) { indices in
                    for index in indices { results[index] = tokenizer.encode(bytes: Array(UnsafeBufferPointer(rebasing: corpus[batch[index]]))) }
                }
            }
            for ids in encoded { try emit(ids) }
            first += batch.count
            try progress(batch.last!.upperBound)
        }
    }
}
