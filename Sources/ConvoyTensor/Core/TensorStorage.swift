#if canImport(Glibc)
import Glibc
#endif

/// A reference-counted block of tensor memory. Views share one storage.
///
/// A storage can give its memory back while staying alive (``releaseMemory()``) and get fresh memory of the
/// same size later (``restoreMemory()``). ZeRO stage 3 does this with gathered parameters: every tensor and
/// every autograd closure that refers to the storage keeps referring to it, and sees the memory again once it
/// is restored. While released, the storage points at an inaccessible (`PROT_NONE`) reservation of its size,
/// so a read or write of released parameters traps at once instead of touching someone else's memory.
public final class TensorStorage: @unchecked Sendable {
    /// Element type of the storage.
    public let dtype: DType
    /// Number of elements.
    public let count: Int
    /// Start of the memory (64-byte aligned); an inaccessible address range while released.
    public private(set) var pointer: UnsafeMutableRawPointer
    private var capacity: Int
    /// What and whose the memory is counted as (the allocating thread's ``TensorAllocator/tag``).
    public let tag: TensorAllocator.MemoryTag
    /// Whether the memory has been given back (``releaseMemory()``) and not restored since.
    public private(set) var isReleased = false

    private init(dtype: DType, count: Int, tag: TensorAllocator.MemoryTag, block: (pointer: UnsafeMutableRawPointer, capacity: Int)) {
        self.dtype = dtype
        self.count = count
        self.tag = tag
        pointer = block.pointer
        capacity = block.capacity
    }

    /// Allocates uninitialised storage for `count` elements.
    public convenience init(dtype: DType, count: Int) {
        let tag = TensorAllocator.tag
        self.init(dtype: dtype, count: count, tag: tag, block: TensorAllocator.shared.allocate(bytes: count * dtype.byteSize, tag: tag))
    }

    /// Allocates storage for `count` elements set to zero.
    public convenience init(zeroedDType dtype: DType, count: Int) {
        self.init(dtype: dtype, count: count)
        pointer.initializeMemory(as: UInt8.self, repeating: 0, count: count * dtype.byteSize)
    }

    /// Allocates storage for `count` elements set to zero, throwing ``ConvoyError/outOfMemory(_:)`` (naming
    /// `purpose`) when the system refuses the memory.
    public convenience init(zeroedDType dtype: DType, count: Int, for purpose: String) throws {
        let tag = TensorAllocator.tag
        self.init(dtype: dtype, count: count, tag: tag,
                  block: try TensorAllocator.shared.allocateOrThrow(bytes: count * dtype.byteSize, for: purpose, tag: tag))
        pointer.initializeMemory(as: UInt8.self, repeating: 0, count: count * dtype.byteSize)
    }

    deinit {
        if isReleased {
            munmap(pointer, capacity)
        } else {
            TensorAllocator.shared.deallocate(pointer, capacity: capacity, tag: tag)
        }
    }

    /// Gives the memory back to the allocator (it stops counting as live); the contents are lost. Until
    /// ``restoreMemory()`` any access traps. Releasing a released storage does nothing.
    public func releaseMemory() {
        guard !isReleased else { return }
        let reservation = mmap(nil, capacity, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
        guard let reservation, reservation != MAP_FAILED else {
            fatalError("Convoy could not reserve \(capacity) bytes of address space for released tensor storage")
        }
        TensorAllocator.shared.deallocate(pointer, capacity: capacity, tag: tag)
        pointer = reservation
        isReleased = true
    }

    /// Gets memory of the original size again (counted under the original tag); the contents are undefined
    /// until written. Restoring memory that was never released does nothing.
    public func restoreMemory() {
        guard isReleased else { return }
        munmap(pointer, capacity)
        let block = TensorAllocator.shared.allocate(bytes: count * dtype.byteSize, tag: tag)
        pointer = block.pointer
        capacity = block.capacity
        isReleased = false
    }

    /// The memory as Float32 elements (the storage must hold Float32).
    @inlinable
    public var floats: UnsafeMutablePointer<Float> { pointer.assumingMemoryBound(to: Float.self) }
}
