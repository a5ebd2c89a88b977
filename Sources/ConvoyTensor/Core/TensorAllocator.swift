import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Hands out 64-byte aligned memory for tensor storage and keeps freed blocks for reuse.
///
/// A training step allocates the same sizes every time (activations, gradients, temporaries). Caching the
/// blocks by size turns those allocations into list operations after the first step, instead of fresh
/// `mmap`s whose pages the kernel zero-fills again and again. The allocator also counts live and peak bytes,
/// which the memory benchmarks and ZeRO's accounting read ("count it in the allocator, not by formula").
public final class TensorAllocator: Sendable {
    /// The process-wide allocator used by every tensor.
    public static let shared = TensorAllocator()

    /// Blocks smaller than this are rounded up to a multiple of 64 bytes; larger ones to a multiple of 4 KiB,
    /// so slightly different sizes share cache entries without wasting much.
    private static let pageRoundingThreshold = 1 << 16

    private struct State {
        var freeBlocks: [Int: [UInt]] = [:]  // addresses, so the state stays Sendable
        var cachedBytes = 0
        var liveBytes = 0
        var peakLiveBytes = 0
        var allocationCount = 0
    }

    private let state = Mutex(State())
    /// Cached free bytes beyond this are returned to the system.
    private let cacheLimitBytes: Int

    /// Creates an allocator that keeps at most `cacheLimitBytes` of freed memory for reuse.
    public init(cacheLimitBytes: Int = 4 << 30) {
        self.cacheLimitBytes = cacheLimitBytes
    }

    static func roundedSize(_ bytes: Int) -> Int {
        let minimum = Swift.max(bytes, 64)
        let unit = minimum < pageRoundingThreshold ? 64 : 4096
        return (minimum + unit - 1) / unit * unit
    }

    /// Allocates `bytes` bytes aligned to 64; the contents are undefined.
    public func allocate(bytes: Int) -> (pointer: UnsafeMutableRawPointer, capacity: Int) {
        let size = Self.roundedSize(bytes)
        let reused: UInt? = state.withLock { state in
            state.liveBytes += size
            state.peakLiveBytes = Swift.max(state.peakLiveBytes, state.liveBytes)
            state.allocationCount += 1
            if var list = state.freeBlocks[size], let block = list.popLast() {
                state.freeBlocks[size] = list
                state.cachedBytes -= size
                return block
            }
            return nil
        }
        if let reused, let pointer = UnsafeMutableRawPointer(bitPattern: reused) { return (pointer, size) }
        var raw: UnsafeMutableRawPointer?
        let status = posix_memalign(&raw, 64, size)
        guard status == 0, let raw else {
            fatalError("Convoy could not allocate \(size) bytes for a tensor (posix_memalign returned \(status))")
        }
        return (raw, size)
    }

    /// Returns a block obtained from ``allocate(bytes:)``.
    public func deallocate(_ pointer: UnsafeMutableRawPointer, capacity: Int) {
        let keep = state.withLock { state -> Bool in
            state.liveBytes -= capacity
            guard state.cachedBytes + capacity <= cacheLimitBytes else { return false }
            state.freeBlocks[capacity, default: []].append(UInt(bitPattern: pointer))
            state.cachedBytes += capacity
            return true
        }
        if !keep { free(pointer) }
    }

    /// Bytes currently held by live tensors.
    public var liveBytes: Int { state.withLock { $0.liveBytes } }
    /// The largest value ``liveBytes`` has reached since the last ``resetPeak()``.
    public var peakLiveBytes: Int { state.withLock { $0.peakLiveBytes } }
    /// Number of allocations served so far.
    public var allocationCount: Int { state.withLock { $0.allocationCount } }

    /// Restarts peak tracking from the current live bytes.
    public func resetPeak() { state.withLock { $0.peakLiveBytes = $0.liveBytes } }

    /// Frees every cached block.
    public func releaseCache() {
        let blocks = state.withLock { state -> [UInt] in
            let all = state.freeBlocks.values.flatMap { $0 }
            state.freeBlocks.removeAll()
            state.cachedBytes = 0
            return all
        }
        for block in blocks { free(UnsafeMutableRawPointer(bitPattern: block)) }
    }
}

/// A reference-counted block of tensor memory. Views share one storage.
public final class TensorStorage: @unchecked Sendable {
    /// Element type of the storage.
    public let dtype: DType
    /// Number of elements.
    public let count: Int
    /// Start of the memory (64-byte aligned).
    public let pointer: UnsafeMutableRawPointer
    private let capacity: Int

    /// Allocates uninitialised storage for `count` elements.
    public init(dtype: DType, count: Int) {
        self.dtype = dtype
        self.count = count
        let block = TensorAllocator.shared.allocate(bytes: count * dtype.byteSize)
        pointer = block.pointer
        capacity = block.capacity
    }

    /// Allocates storage for `count` elements set to zero.
    public convenience init(zeroedDType dtype: DType, count: Int) {
        self.init(dtype: dtype, count: count)
        pointer.initializeMemory(as: UInt8.self, repeating: 0, count: count * dtype.byteSize)
    }

    deinit {
        TensorAllocator.shared.deallocate(pointer, capacity: capacity)
    }

    /// The memory as Float32 elements (the storage must hold Float32).
    @inlinable
    public var floats: UnsafeMutablePointer<Float> { pointer.assumingMemoryBound(to: Float.self) }
}
