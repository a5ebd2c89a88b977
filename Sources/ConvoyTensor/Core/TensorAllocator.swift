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
        var liveBytesByCategory: [MemoryCategory: Int] = [:]
        var liveBytesByOwner: [Int: [MemoryCategory: Int]] = [:]
    }

    /// What memory is for, so benchmarks can report parameters, gradients and optimizer state as allocated.
    public enum MemoryCategory: String, Sendable, CaseIterable {
        case other, parameters, gradients, optimizerState = "optimizer state"
    }

    private static let currentCategory = ThreadLocal<MemoryCategory> { .other }
    private static let currentOwner = ThreadLocal<Int> { -1 }

    /// Who new storage on this thread is counted for (a rank of the Local backend; -1: nobody in particular).
    public static var owner: Int { currentOwner.value }

    /// Counts storage allocated by `body` on this thread as `owner`'s (LocalWorld sets each rank's thread).
    public static func withOwner<Result>(_ owner: Int, _ body: () throws -> Result) rethrows -> Result {
        try currentOwner.withValue(owner, body)
    }

    /// Bytes held by live storage of `category` allocated for `owner`.
    public func liveBytes(of category: MemoryCategory, owner: Int) -> Int {
        state.withLock { $0.liveBytesByOwner[owner]?[category] ?? 0 }
    }

    /// The category new storage on this thread is counted under.
    public static var category: MemoryCategory { currentCategory.value }

    /// Counts storage allocated by `body` on this thread under `category` (until it is freed).
    public static func withCategory<Result>(_ category: MemoryCategory, _ body: () throws -> Result) rethrows -> Result {
        try currentCategory.withValue(category, body)
    }

    /// Bytes held by live storage of `category`.
    public func liveBytes(of category: MemoryCategory) -> Int {
        state.withLock { $0.liveBytesByCategory[category, default: 0] }
    }

    /// Adds (or, negative, removes) `bytes` of live storage under a category and owner.
    func account(_ bytes: Int, category: MemoryCategory, owner: Int) {
        state.withLock {
            $0.liveBytesByCategory[category, default: 0] += bytes
            $0.liveBytesByOwner[owner, default: [:]][category, default: 0] += bytes
        }
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
    /// What the memory is counted as (the allocating thread's ``TensorAllocator/category``).
    public let category: TensorAllocator.MemoryCategory
    /// Whose memory it is (the allocating thread's ``TensorAllocator/owner``).
    public let owner: Int

    /// Allocates uninitialised storage for `count` elements.
    public init(dtype: DType, count: Int) {
        self.dtype = dtype
        self.count = count
        let block = TensorAllocator.shared.allocate(bytes: count * dtype.byteSize)
        pointer = block.pointer
        capacity = block.capacity
        category = TensorAllocator.category
        owner = TensorAllocator.owner
        TensorAllocator.shared.account(capacity, category: category, owner: owner)
    }

    /// Allocates storage for `count` elements set to zero.
    public convenience init(zeroedDType dtype: DType, count: Int) {
        self.init(dtype: dtype, count: count)
        pointer.initializeMemory(as: UInt8.self, repeating: 0, count: count * dtype.byteSize)
    }

    deinit {
        TensorAllocator.shared.account(-capacity, category: category, owner: owner)
        TensorAllocator.shared.deallocate(pointer, capacity: capacity)
    }

    /// The memory as Float32 elements (the storage must hold Float32).
    @inlinable
    public var floats: UnsafeMutablePointer<Float> { pointer.assumingMemoryBound(to: Float.self) }
}
