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
        var liveBytesByTag: [MemoryTag: Int] = [:]
    }

    /// What memory is for, so benchmarks can report parameters, gradients and optimizer state as allocated.
    public enum MemoryCategory: String, Sendable, CaseIterable {
        case other, parameters, gradients, optimizerState = "optimizer state"
    }

    /// Whom and what a block of storage is counted for.
    public struct MemoryTag: Hashable, Sendable {
        public var category: MemoryCategory
        /// A rank of the Local backend, or -1 for nobody in particular.
        public var owner: Int
    }

    /// One thread-local read per allocation: the tag new storage on this thread is counted under.
    private static let currentTag = ThreadLocal<MemoryTag> { MemoryTag(category: .other, owner: -1) }

    /// The tag new storage on this thread is counted under.
    public static var tag: MemoryTag { currentTag.value }

    /// Counts storage allocated by `body` on this thread as `owner`'s (LocalWorld sets each rank's thread).
    public static func withOwner<Result>(_ owner: Int, _ body: () throws -> Result) rethrows -> Result {
        var tag = currentTag.value
        tag.owner = owner
        return try currentTag.withValue(tag, body)
    }

    /// Counts storage allocated by `body` on this thread under `category` (until it is freed).
    public static func withCategory<Result>(_ category: MemoryCategory, _ body: () throws -> Result) rethrows -> Result {
        var tag = currentTag.value
        tag.category = category
        return try currentTag.withValue(tag, body)
    }

    /// Bytes held by live storage of `category` allocated for `owner`.
    public func liveBytes(of category: MemoryCategory, owner: Int) -> Int {
        state.withLock { $0.liveBytesByTag[MemoryTag(category: category, owner: owner), default: 0] }
    }

    /// Bytes held by live storage of `category`, whoever owns it.
    public func liveBytes(of category: MemoryCategory) -> Int {
        state.withLock { $0.liveBytesByTag.reduce(0) { $0 + ($1.key.category == category ? $1.value : 0) } }
    }

    private let state = Mutex(State())

    /// Called with a one-line message when the system refuses memory to ``allocate(bytes:tag:)``, before the
    /// process stops. An allocation deep inside an operator cannot throw to its caller, so the program installs
    /// a handler that reports the message as an error and ends the run (the CLI prints it and, under MPI,
    /// aborts the whole job); without one the process traps. The long-lived state of a run (flat parameter and
    /// gradient buffers, optimizer state, ZeRO shards) is allocated through ``allocateOrThrow(bytes:for:tag:)``
    /// instead, and runs that cannot fit are normally refused before either, by the plan's memory estimate.
    public static let allocationFailureHandler = Mutex<(@Sendable (String) -> Void)?>(nil)
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

    /// Allocates `bytes` bytes aligned to 64, counted under `tag`; the contents are undefined. When the system
    /// refuses, the ``allocationFailureHandler`` reports it and the process stops.
    public func allocate(bytes: Int, tag: MemoryTag = TensorAllocator.tag) -> (pointer: UnsafeMutableRawPointer, capacity: Int) {
        switch allocateIfPossible(bytes: bytes, tag: tag) {
        case .success(let block):
            return block
        case .failure(let error):
            let message = "Convoy could not allocate \(error.size) bytes for a tensor (\(error.reason)); the machine is out of memory for this run: make the model or --batch smaller, or shard it (--zero-stage, --pp)"
            Self.allocationFailureHandler.withLock { $0 }?(message)
            fatalError(message)
        }
    }

    /// Allocates like ``allocate(bytes:tag:)`` but throws ``ConvoyError/outOfMemory(_:)`` when the system
    /// refuses, naming `purpose` ("the AdamW moments") in the message.
    public func allocateOrThrow(bytes: Int, for purpose: String, tag: MemoryTag = TensorAllocator.tag) throws -> (pointer: UnsafeMutableRawPointer, capacity: Int) {
        switch allocateIfPossible(bytes: bytes, tag: tag) {
        case .success(let block):
            return block
        case .failure(let error):
            throw ConvoyError.outOfMemory("Convoy could not allocate \(error.size) bytes for \(purpose) (\(error.reason)): make the model or --batch smaller, or shard it (--zero-stage, --pp)")
        }
    }

    /// Why the system refused a block: its rounded size and `strerror`'s text.
    struct Refusal: Error {
        var size: Int
        var reason: String
    }

    private func allocateIfPossible(bytes: Int, tag: MemoryTag) -> Result<(pointer: UnsafeMutableRawPointer, capacity: Int), Refusal> {
        let size = Self.roundedSize(bytes)
        // Counts a block handed out (so a refused allocation is never counted, not even in the peak).
        func account(_ state: inout State) {
            state.liveBytes += size
            state.liveBytesByTag[tag, default: 0] += size
            state.peakLiveBytes = Swift.max(state.peakLiveBytes, state.liveBytes)
            state.allocationCount += 1
        }
        let reused: UInt? = state.withLock { state in
            guard var list = state.freeBlocks[size], let block = list.popLast() else { return nil }
            state.freeBlocks[size] = list
            state.cachedBytes -= size
            account(&state)
            return block
        }
        if let reused, let pointer = UnsafeMutableRawPointer(bitPattern: reused) { return .success((pointer, size)) }
        var raw: UnsafeMutableRawPointer?
        let status = posix_memalign(&raw, 64, size)
        guard status == 0, let raw else { return .failure(Refusal(size: size, reason: String(cString: strerror(status)))) }
        state.withLock { account(&$0) }
        return .success((raw, size))
    }

    /// Returns a block obtained from ``allocate(bytes:tag:)`` with the same tag.
    public func deallocate(_ pointer: UnsafeMutableRawPointer, capacity: Int, tag: MemoryTag) {
        // The thread-local is read only while some thread quarantines: every tensor's free passes here.
        let quarantine = Self.activeQuarantines.load(ordering: .relaxed) > 0 ? Self.quarantine.value.flatMap { $0.allocator === self ? $0 : nil } : nil
        let keep = state.withLock { state -> Bool in
            state.liveBytes -= capacity
            state.liveBytesByTag[tag, default: 0] -= capacity
            return quarantine == nil && Self.cache(UInt(bitPattern: pointer), capacity: capacity, in: &state, limit: cacheLimitBytes)
        }
        if let quarantine {
            pointer.initializeMemory(as: UInt8.self, repeating: 0xFF, count: capacity)
            quarantine.blocks.append((UInt(bitPattern: pointer), capacity))
        } else if !keep {
            free(pointer)
        }
    }

    /// Puts a freed block on its size's free list, unless the cache is full; says whether it did.
    private static func cache(_ address: UInt, capacity: Int, in state: inout State, limit: Int) -> Bool {
        guard state.cachedBytes + capacity <= limit else { return false }
        state.freeBlocks[capacity, default: []].append(address)
        state.cachedBytes += capacity
        return true
    }

    /// Blocks one thread freed inside ``withFreedMemoryPoisoned(_:)``, held back from reuse.
    private final class Quarantine {
        let allocator: TensorAllocator
        var blocks: [(address: UInt, capacity: Int)] = []  // addresses, as in the free lists
        init(allocator: TensorAllocator) { self.allocator = allocator }
    }

    /// This thread's quarantine, while it runs ``withFreedMemoryPoisoned(_:)``.
    private static let quarantine = ThreadLocal<Quarantine?> { nil }
    /// Threads inside ``withFreedMemoryPoisoned(_:)`` now, so that a free checks its thread's quarantine only
    /// when there can be one.
    private static let activeQuarantines = Atomic<Int>(0)

    /// Runs `body` with every block this thread frees filled with all-ones bytes (NaN in fp32 and in bf16) and
    /// kept out of reuse until `body` returns; then the blocks go back to the cache.
    ///
    /// Code that reads memory it no longer holds then reads NaN, deterministically, instead of whatever the
    /// next tensor happened to write there: the gradient checker runs an op's forward and backward inside this,
    /// so a backward that reads a forward temporary it did not keep alive fails the check. Only this thread's
    /// frees are held, so other threads (parallel tests, other ranks) can neither see the poison nor take a
    /// poisoned block. Nested calls share the outermost quarantine.
    public func withFreedMemoryPoisoned<Result>(_ body: () throws -> Result) rethrows -> Result {
        if Self.quarantine.value != nil { return try body() }
        let quarantine = Quarantine(allocator: self)
        Self.quarantine.value = quarantine
        Self.activeQuarantines.add(1, ordering: .relaxed)
        defer {
            Self.activeQuarantines.subtract(1, ordering: .relaxed)
            Self.quarantine.value = nil
            let blocks = quarantine.blocks
            let uncached = state.withLock { state in
                blocks.filter { !Self.cache($0.address, capacity: $0.capacity, in: &state, limit: cacheLimitBytes) }.map(\.address)
            }
            for address in uncached { free(UnsafeMutableRawPointer(bitPattern: address)) }
        }
        return try body()
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
