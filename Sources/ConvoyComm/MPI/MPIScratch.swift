import CMPI
import ConvoyTensor
import Foundation

/// Memory that an operation keeps alive until MPI is done with it: Float32 copies of BFloat16 data, count
/// and displacement arrays (MPI may read them until the operation completes), and a placeholder address
/// for empty buffers.
final class MPIScratch {
    private var allocations: [UnsafeMutableRawPointer] = []

    func bytes(_ count: Int) -> UnsafeMutableRawPointer {
        let pointer = UnsafeMutableRawPointer.allocate(byteCount: Swift.max(count, 16), alignment: 64)
        allocations.append(pointer)
        return pointer
    }

    func floats(_ count: Int) -> UnsafeMutablePointer<Float> {
        bytes(count * MemoryLayout<Float>.stride).bindMemory(to: Float.self, capacity: Swift.max(count, 1))
    }

    func int64s(_ values: [Int64]) -> UnsafeMutablePointer<Int64> {
        let pointer = bytes(values.count * MemoryLayout<Int64>.stride).bindMemory(to: Int64.self, capacity: Swift.max(values.count, 1))
        for (index, value) in values.enumerated() { pointer[index] = value }
        return pointer
    }

    func int32s(_ values: [Int32]) -> UnsafeMutablePointer<Int32> {
        let pointer = bytes(values.count * MemoryLayout<Int32>.stride).bindMemory(to: Int32.self, capacity: Swift.max(values.count, 1))
        for (index, value) in values.enumerated() { pointer[index] = value }
        return pointer
    }

    /// The buffer's address, or a placeholder for an empty buffer without one (MPI wants a valid pointer).
    func address(of buffer: CommunicationBuffer) -> UnsafeMutableRawPointer {
        buffer.pointer ?? bytes(0)
    }

    deinit { allocations.forEach { $0.deallocate() } }
}

/// The bytes a buffer covers, to find operations that touch the same memory.
struct MemorySpan {
    let start: UInt
    let end: UInt

    init(_ buffer: CommunicationBuffer) {
        start = buffer.pointer.map { UInt(bitPattern: $0) } ?? 0
        end = start + UInt(buffer.byteCount)
    }

    func overlaps(_ other: MemorySpan) -> Bool { start < other.end && other.start < end }
}

enum BufferMath {
    static func widen(_ source: UnsafeMutableRawPointer, count: Int, into destination: UnsafeMutablePointer<Float>) {
        let bits = source.assumingMemoryBound(to: UInt16.self)
        for index in 0..<count { destination[index] = Float(bitPattern: UInt32(bits[index]) << 16) }
    }

    static func narrow(_ source: UnsafeMutablePointer<Float>, count: Int, into destination: UnsafeMutableRawPointer, scale: Float) {
        let bits = destination.assumingMemoryBound(to: UInt16.self)
        if scale == 1 {
            for index in 0..<count { bits[index] = BFloat16(source[index]).bitPattern }
        } else {
            for index in 0..<count { bits[index] = BFloat16(source[index] * scale).bitPattern }
        }
    }

    static func scale(_ values: UnsafeMutablePointer<Float>, count: Int, by factor: Float) {
        for index in 0..<count { values[index] *= factor }
    }
}

extension ReduceOperation {
    /// Average is a sum scaled by 1/size afterwards.
    var mpiOperation: MPI_Op {
        switch self {
        case .sum, .average: return convoy_mpi_sum()
        case .max: return convoy_mpi_max()
        case .min: return convoy_mpi_min()
        }
    }
}

extension DType {
    /// The MPI type that moves these elements unchanged (BFloat16 as raw 16-bit words).
    var mpiTransferType: MPI_Datatype {
        switch self {
        case .float32: return convoy_mpi_float()
        case .bfloat16: return convoy_mpi_uint16()
        }
    }
}

extension MPIRuntime {
    /// Checks a return code, taking the lock only to describe a failure (call it without holding the lock).
    static func checkCall(_ code: Int32, _ operation: String) throws {
        guard code != convoy_mpi_success() else { return }
        throw backendError(code: code, operation: operation)
    }
}
