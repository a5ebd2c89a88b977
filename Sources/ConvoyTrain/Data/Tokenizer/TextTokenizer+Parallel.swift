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
    /// `encode(bytes:)`, because every cut is a safe cut.
    public func encodeInParallel(bytes: [UInt8], chunkBytes: Int = 1 << 20, pool: ComputePool) -> [Int32] {
        let boundaries = bytes.withUnsafeBufferPointer { chunkBoundaries(of: $0, chunkBytes: chunkBytes) }
        let chunkCount = boundaries.count - 1
        guard chunkCount > 1 else { return encode(bytes: bytes) }
        let results = ChunkResults(count: chunkCount)
        pool.parallelFor(chunkCount) { chunks in
            for chunk in chunks {
                results.store(encode(bytes: Array(bytes[boundaries[chunk]..<boundaries[chunk + 1]])), at: chunk)
            }
        }
        return results.joined()
    }
}
