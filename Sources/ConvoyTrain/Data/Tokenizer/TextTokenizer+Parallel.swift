import ConvoyTensor

extension TextTokenizer {
    /// Cut points that split `bytes` into chunks of about `chunkBytes` each, every cut a ``safeCut(in:near:)``
    /// point: `[0, c1, c2, …, bytes.count]`, strictly increasing (a text with no safe cut is one chunk).
    public func chunkBoundaries(of bytes: UnsafeBufferPointer<UInt8>, chunkBytes: Int) -> [Int] {
        var boundaries = [0]
        let step = max(chunkBytes, 1)
        while let last = boundaries.last, last < bytes.count {
            let target = last + step
            let cut = target >= bytes.count ? bytes.count : max(safeCut(in: bytes, near: target), target)
            boundaries.append(min(cut, bytes.count))
        }
        return boundaries
    }

    /// The ids of `bytes`, encoded in chunks of about `chunkBytes` on `pool`'s threads: the same ids as
    /// `encode(bytes:)`, because every cut is a safe cut (``ParallelTokenization``, collecting every part).
    public func encodeInParallel(bytes: [UInt8], chunkBytes: Int = 1 << 20, pool: ComputePool) -> [Int32] {
        var ids: [Int32] = []
        bytes.withUnsafeBufferPointer { corpus in
            ParallelTokenization(tokenizer: self, pool: pool, chunkBytes: chunkBytes).encode(corpus, emit: { ids += $0 }, progress: { _ in })
        }
        return ids
    }
}
