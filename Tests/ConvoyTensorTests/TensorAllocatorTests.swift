import ConvoyTensor
import Foundation
import Testing

/// The allocator's free-memory quarantine, which the gradient checker relies on to expose use-after-free.
@Suite struct TensorAllocatorTests {
    @Test func aBlockFreedInsideTheQuarantineIsPoisonedAndNotReusedUntilItEnds() {
        let allocator = TensorAllocator()  // private: nothing else allocates from it
        let bytes = 4096
        let (first, capacity) = allocator.allocate(bytes: bytes)
        first.initializeMemory(as: UInt8.self, repeating: 0, count: capacity)
        allocator.withFreedMemoryPoisoned {
            allocator.deallocate(first, capacity: capacity, tag: TensorAllocator.tag)
            #expect(allocator.liveBytes == 0, "a quarantined block is no longer live")
            let floats = first.assumingMemoryBound(to: Float.self)
            #expect((0..<capacity / 4).allSatisfy { floats[$0].isNaN }, "the freed block should read back as NaN")
            let second = allocator.allocate(bytes: bytes)
            #expect(second.pointer != first, "a quarantined block must not be handed out again inside the scope")
            allocator.deallocate(second.pointer, capacity: second.capacity, tag: TensorAllocator.tag)
        }
        // Both blocks are back in the cache now: the next two allocations of that size reuse them.
        let reused = [allocator.allocate(bytes: bytes).pointer, allocator.allocate(bytes: bytes).pointer]
        #expect(reused.contains(first))
        #expect(allocator.allocationCount == 4)
    }

    @Test func anotherThreadsFreesAreNeitherPoisonedNorHeld() {
        let allocator = TensorAllocator()
        let bytes = 8192
        let (block, capacity) = allocator.allocate(bytes: bytes)
        block.initializeMemory(as: Float.self, repeating: 1, count: capacity / 4)
        allocator.withFreedMemoryPoisoned {
            let freed = DispatchSemaphore(value: 0)
            let address = UInt(bitPattern: block)
            let other = Thread {
                allocator.deallocate(UnsafeMutableRawPointer(bitPattern: address)!, capacity: capacity, tag: TensorAllocator.tag)
                freed.signal()
            }
            other.start()
            freed.wait()
            #expect(block.assumingMemoryBound(to: Float.self)[0] == 1, "only the quarantining thread's frees are poisoned")
            #expect(allocator.allocate(bytes: bytes).pointer == block, "another thread's free goes straight back to the cache")
        }
    }

    @Test func memoryTheSystemRefusesIsAThrownErrorNamingWhatItWasFor() {
        let allocator = TensorAllocator()
        let impossible = 1 << 62  // beyond any address space: posix_memalign refuses it every time
        #expect(throws: ConvoyError.self) { _ = try allocator.allocateOrThrow(bytes: impossible, for: "a test buffer") }
        do {
            _ = try allocator.allocateOrThrow(bytes: impossible, for: "a test buffer")
        } catch let error as ConvoyError {
            guard case .outOfMemory(let message) = error else { Issue.record("expected outOfMemory, got \(error)"); return }
            #expect(message.contains("a test buffer") && message.contains("\(impossible) bytes") && message.contains("--zero-stage"), "\(message)")
        } catch {
            Issue.record("expected a ConvoyError, got \(error)")
        }
        #expect(allocator.liveBytes == 0 && allocator.allocationCount == 0, "a refused allocation is not counted")
        // The allocator still works afterwards.
        let block = allocator.allocate(bytes: 64)
        #expect(allocator.liveBytes == 64)
        allocator.deallocate(block.pointer, capacity: block.capacity, tag: TensorAllocator.tag)
    }

    @Test func aTensorForLongLivedStateThrowsWhenTheSystemRefusesIt() throws {
        #expect(throws: ConvoyError.self) { _ = try Tensor.zeros([1 << 60], for: "a test buffer") }
        #expect(try Tensor.zeros([3], for: "a test buffer").toArray() == [0, 0, 0])
    }

    @Test func nestedQuarantinesHoldUntilTheOutermostEnds() {
        let allocator = TensorAllocator()
        let (block, capacity) = allocator.allocate(bytes: 256)
        allocator.withFreedMemoryPoisoned {
            allocator.withFreedMemoryPoisoned {
                allocator.deallocate(block, capacity: capacity, tag: TensorAllocator.tag)
            }
            #expect(allocator.allocate(bytes: 256).pointer != block, "the inner scope's end must not release the outer scope's blocks")
        }
        #expect(allocator.allocate(bytes: 256).pointer == block)
    }
}
