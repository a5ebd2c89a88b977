import ConvoyTensor

/// A contiguous buffer of Float32 or BFloat16 elements that a collective reads or writes.
///
/// Collectives work on raw memory so that callers (gradient buckets, flat parameter buffers, pipeline
/// activations) hand over views without copies. The caller keeps the memory untouched until the operation's
/// ``Work`` completes; a buffer made with an `owner` (a tensor's storage, a message buffer) also keeps that
/// owner alive for as long as the operation holds the buffer, so memory cannot be freed under it.
public struct CommunicationBuffer: @unchecked Sendable {
    public let pointer: UnsafeMutableRawPointer?
    public let count: Int
    public let dtype: DType
    /// What owns the memory; retained with the buffer (nil: the caller guarantees the lifetime).
    public let owner: AnyObject?

    public init(pointer: UnsafeMutableRawPointer?, count: Int, dtype: DType, owner: AnyObject? = nil) {
        precondition(count >= 0, "a buffer cannot have a negative count")
        precondition(count == 0 || pointer != nil, "a non-empty buffer needs memory")
        self.pointer = pointer
        self.count = count
        self.dtype = dtype
        self.owner = owner
    }

    /// The elements of a contiguous tensor; the buffer retains the tensor's storage.
    public init(_ tensor: Tensor) {
        precondition(tensor.isContiguous, "collectives need contiguous tensors; call contiguous() first")
        self.init(pointer: tensor.storage.pointer + tensor.offset * tensor.dtype.byteSize, count: tensor.count, dtype: tensor.dtype, owner: tensor.storage)
    }

    /// Bytes covered.
    public var byteCount: Int { count * dtype.byteSize }

    /// Elements `range` of this buffer.
    public func slice(_ range: Range<Int>) -> CommunicationBuffer {
        precondition(range.lowerBound >= 0 && range.upperBound <= count, "slice \(range) outside a buffer of \(count) elements")
        return CommunicationBuffer(pointer: range.isEmpty ? pointer : pointer! + range.lowerBound * dtype.byteSize, count: range.count, dtype: dtype, owner: owner)
    }
}

/// How a buffer of `total` elements is cut into one chunk per rank for reduce-scatter and all-gather when
/// the group size does not divide it: rank r owns elements `total·r/n ..< total·(r+1)/n`, so chunk sizes
/// differ by at most one and every rank computes the same cuts.
public enum ChunkLayout {
    /// Rank `rank`'s chunk of `total` elements cut `parts` ways.
    public static func range(total: Int, parts: Int, rank: Int) -> Range<Int> {
        (total * rank / parts)..<(total * (rank + 1) / parts)
    }
}
