import CMPI
import ConvoyTensor
import Foundation
import Synchronization

/// A ``ProcessGroup`` over an Open MPI communicator: one rank per process, on one host or many.
///
/// Each group owns a communication thread with a FIFO queue. Every operation is enqueued at once (the call
/// returns its ``Work``); the thread starts the non-blocking MPI call (`MPI_Iallreduce`,
/// `MPI_Ireduce_scatter`, `MPI_Iallgatherv`, `MPI_Ibcast`, `MPI_Isend`/`MPI_Irecv`, `MPI_Ibarrier`) and polls
/// `MPI_Test` until it completes or its timeout passes. Operations start in the order issued — the order MPI
/// needs for collectives on one communicator and for matching messages between a pair of ranks — and their
/// handles complete in that order too. Several may be in flight together (a send and the receive issued after
/// it must be, or a ring exchange would deadlock), except that an operation whose memory overlaps one still
/// in flight waits for it, so issuing two operations on one buffer behaves as if they ran one after the other.
/// Several groups progress independently.
///
/// Data types: Float32 reduces natively. MPI has no BFloat16, so a BFloat16 reduction widens the buffer into
/// a Float32 scratch copy, reduces that and rounds back (an extra copy and twice the bytes on the wire, but
/// the sum is accumulated in Float32). Operations that only move data (all-gather, broadcast, send, receive)
/// carry BFloat16 as raw 16-bit elements (`MPI_UINT16_T`) without conversion.
///
/// Timeouts: each operation fails with ``CommunicationError/timedOut(_:)`` when it has not completed within
/// ``CommunicationTimeout/seconds`` (read when it is issued). MPI cannot tell which ranks of a collective have
/// not arrived, so the message says so and points at `CONVOY_DEBUG_COLLECTIVES=1`. A timed-out receive is
/// cancelled and the group stays usable; a timed-out collective or send cannot be withdrawn from MPI (which
/// may still read or write its memory), so the group is broken from then on and later operations fail fast.
///
/// Debug mode (``CollectiveDebugging``, `CONVOY_DEBUG_COLLECTIVES=1`, read when each operation is issued):
/// every collective (split and barrier included) first all-gathers a compact encoding of its
/// ``CollectiveDescriptor`` and sequence number among the ranks, under the same timeout, and starts only if
/// all ranks issued the same thing; otherwise every rank fails it with ``CommunicationError/mismatch(_:)``
/// naming both sides, and the group refuses further work. A mismatched count thus never reaches MPI. While a
/// collective's check is in flight the next collective waits (sends and receives need not), which keeps the
/// order of collectives on the communicator the same on every rank. With the mode off nothing is exchanged.
public final class MPIProcessGroup: ProcessGroup {
    public let rank: Int
    public let size: Int
    public let name: String
    public let worldRanks: [Int]
    private let engine: MPICommunicationEngine
    /// Sequence numbers, counted from 0 as the Local backend does: collectives (split included) agree across
    /// ranks; sends and receives are counted apart so that they do not shift the collectives' numbers.
    private let counters = Mutex<(collectives: Int, sends: Int, receives: Int)>((0, 0, 0))

    init(communicator: MPI_Comm, name: String, rank: Int, size: Int, worldRanks: [Int], freesCommunicator: Bool) {
        self.rank = rank
        self.size = size
        self.name = name
        self.worldRanks = worldRanks
        self.engine = MPICommunicationEngine(communicator: communicator, groupName: name, groupSize: size, freesCommunicator: freesCommunicator)
    }

    deinit { engine.shutDown() }

    // MARK: Collectives

    public func allReduceAsync(_ buffer: CommunicationBuffer, operation: ReduceOperation) -> Work {
        let descriptor = CollectiveDescriptor(kind: .allReduce, dtype: buffer.dtype, count: buffer.count, operation: operation)
        if let problem = countProblem(buffer.count, "buffer") { return rejected(descriptor.description, problem) }
        let size = self.size
        return enqueue(descriptor.description, reads: [], writes: [buffer], role: .collective(descriptor)) { communicator, scratch, request in
            let count = Int32(buffer.count)
            switch buffer.dtype {
            case .float32:
                let data = scratch.address(of: buffer)
                return MPIStep(code: MPI_Iallreduce(convoy_mpi_in_place(), data, count, convoy_mpi_float(), operation.mpiOperation, communicator, request)) {
                    if operation == .average { BufferMath.scale(data.assumingMemoryBound(to: Float.self), count: buffer.count, by: 1 / Float(size)) }
                }
            case .bfloat16:
                let wide = scratch.floats(buffer.count)
                BufferMath.widen(scratch.address(of: buffer), count: buffer.count, into: wide)
                return MPIStep(code: MPI_Iallreduce(convoy_mpi_in_place(), wide, count, convoy_mpi_float(), operation.mpiOperation, communicator, request)) {
                    BufferMath.narrow(wide, count: buffer.count, into: scratch.address(of: buffer), scale: operation == .average ? 1 / Float(size) : 1)
                }
            }
        }
    }

    public func reduceScatterAsync(input: CommunicationBuffer, output: CommunicationBuffer, operation: ReduceOperation) -> Work {
        let descriptor = CollectiveDescriptor(kind: .reduceScatter, dtype: input.dtype, count: input.count, operation: operation)
        if let problem = dtypeProblem(input, output) ?? countProblem(input.count, "input") { return rejected(descriptor.description, problem) }
        let chunk = ChunkLayout.range(total: input.count, parts: size, rank: rank)
        guard output.count == chunk.count else {
            return rejected(descriptor.description, "output has \(output.count) elements but rank \(rank)'s chunk of a \(input.count)-element input cut \(size) ways is \(chunk.count) elements (ChunkLayout.range(total: \(input.count), parts: \(size), rank: \(rank)) = \(chunk)); size the output to that chunk")
        }
        let size = self.size
        return enqueue(descriptor.description, reads: [input], writes: [output], role: .collective(descriptor)) { communicator, scratch, request in
            let counts = scratch.int32s((0..<size).map { Int32(ChunkLayout.range(total: input.count, parts: size, rank: $0).count) })
            let scale: Float = operation == .average ? 1 / Float(size) : 1
            switch input.dtype {
            case .float32:
                // MPI forbids aliased send and receive buffers (ZeRO often reduces into a slice of the input).
                let aliased = MemorySpan(input).overlaps(MemorySpan(output))
                let result = aliased ? UnsafeMutableRawPointer(scratch.floats(output.count)) : scratch.address(of: output)
                return MPIStep(code: MPI_Ireduce_scatter(scratch.address(of: input), result, counts, convoy_mpi_float(), operation.mpiOperation, communicator, request)) {
                    let values = result.assumingMemoryBound(to: Float.self)
                    if scale != 1 { BufferMath.scale(values, count: output.count, by: scale) }
                    if aliased { scratch.address(of: output).copyMemory(from: values, byteCount: output.byteCount) }
                }
            case .bfloat16:
                let wideInput = scratch.floats(input.count)
                let wideOutput = scratch.floats(chunk.count)
                BufferMath.widen(scratch.address(of: input), count: input.count, into: wideInput)
                return MPIStep(code: MPI_Ireduce_scatter(wideInput, wideOutput, counts, convoy_mpi_float(), operation.mpiOperation, communicator, request)) {
                    BufferMath.narrow(wideOutput, count: output.count, into: scratch.address(of: output), scale: scale)
                }
            }
        }
    }

    public func allGatherAsync(input: CommunicationBuffer, output: CommunicationBuffer) -> Work {
        // The output's count, as the Local backend describes it: ranks' inputs differ when the size does not divide it.
        let descriptor = CollectiveDescriptor(kind: .allGather, dtype: output.dtype, count: output.count)
        if let problem = dtypeProblem(input, output) ?? countProblem(output.count, "output") { return rejected(descriptor.description, problem) }
        let chunk = ChunkLayout.range(total: output.count, parts: size, rank: rank)
        guard input.count == chunk.count else {
            return rejected(descriptor.description, "input has \(input.count) elements but rank \(rank)'s chunk of a \(output.count)-element output cut \(size) ways is \(chunk.count) elements (ChunkLayout.range(total: \(output.count), parts: \(size), rank: \(rank)) = \(chunk)); size the input to that chunk")
        }
        let size = self.size
        return enqueue(descriptor.description, reads: [input], writes: [output], role: .collective(descriptor)) { communicator, scratch, request in
            let ranges = (0..<size).map { ChunkLayout.range(total: output.count, parts: size, rank: $0) }
            let counts = scratch.int32s(ranges.map { Int32($0.count) })
            let displacements = scratch.int32s(ranges.map { Int32($0.lowerBound) })
            let datatype = input.dtype.mpiTransferType
            let destination = scratch.address(of: output)
            var source = UnsafeRawPointer(scratch.address(of: input))
            if input.count > 0 && source == UnsafeRawPointer(destination + chunk.lowerBound * output.dtype.byteSize) {
                source = UnsafeRawPointer(convoy_mpi_in_place())  // the input already sits in its place in the output
            } else if MemorySpan(input).overlaps(MemorySpan(output)) {
                let copy = scratch.bytes(input.byteCount)
                copy.copyMemory(from: source, byteCount: input.byteCount)
                source = UnsafeRawPointer(copy)
            }
            return MPIStep(code: MPI_Iallgatherv(source, Int32(input.count), datatype, destination, counts, displacements, datatype, communicator, request))
        }
    }

    public func broadcastAsync(_ buffer: CommunicationBuffer, root: Int) -> Work {
        let descriptor = CollectiveDescriptor(kind: .broadcast, dtype: buffer.dtype, count: buffer.count, root: root)
        if let problem = rankProblem(root, "root") ?? countProblem(buffer.count, "buffer") { return rejected(descriptor.description, problem) }
        let isRoot = root == rank
        return enqueue(descriptor.description, reads: isRoot ? [buffer] : [], writes: isRoot ? [] : [buffer], role: .collective(descriptor)) { communicator, scratch, request in
            MPIStep(code: MPI_Ibcast(scratch.address(of: buffer), Int32(buffer.count), buffer.dtype.mpiTransferType, Int32(root), communicator, request))
        }
    }

    public func barrierAsync() -> Work {
        let descriptor = CollectiveDescriptor(kind: .barrier)
        return enqueue(descriptor.description, reads: [], writes: [], role: .collective(descriptor)) { communicator, _, request in
            MPIStep(code: MPI_Ibarrier(communicator, request))
        }
    }

    // MARK: Point to point

    public func sendAsync(_ buffer: CommunicationBuffer, to destination: Int, tag: Int) -> Work {
        func what() -> String { "send to rank \(destination) tag \(tag) (\(buffer.dtype) count \(buffer.count))" }
        if let problem = peerProblem(destination, "destination") ?? tagProblem(tag) ?? countProblem(buffer.count, "buffer") { return rejected(what(), problem) }
        return enqueue(what(), reads: [buffer], writes: [], role: .send(peer: destination, tag: tag)) { communicator, scratch, request in
            MPIStep(code: MPI_Isend(scratch.address(of: buffer), Int32(buffer.count), buffer.dtype.mpiTransferType, Int32(destination), Int32(tag), communicator, request))
        }
    }

    public func receiveAsync(_ buffer: CommunicationBuffer, from source: Int, tag: Int) -> Work {
        func what() -> String { "receive from rank \(source) tag \(tag) (\(buffer.dtype) count \(buffer.count))" }
        if let problem = peerProblem(source, "source") ?? tagProblem(tag) ?? countProblem(buffer.count, "buffer") { return rejected(what(), problem) }
        return enqueue(what(), reads: [], writes: [buffer], role: .receive(peer: source, tag: tag, count: buffer.count, datatype: buffer.dtype.mpiTransferType)) { communicator, scratch, request in
            MPIStep(code: MPI_Irecv(scratch.address(of: buffer), Int32(buffer.count), buffer.dtype.mpiTransferType, Int32(source), Int32(tag), communicator, request))
        }
    }

    /// Polls `MPI_Iprobe(MPI_ANY_SOURCE, tag)` on the communication thread until a message is there or the
    /// timeout passes (nothing is started in MPI, so a timed-out probe leaves the group usable).
    public func probeAsync(tag: Int, dtype: DType) -> Work {
        let what = "probe for tag \(tag) from any rank (\(dtype))"
        if let problem = tagProblem(tag) { return rejected(what, problem) }
        return enqueue(what, reads: [], writes: [], role: .probe(tag: tag, datatype: dtype.mpiTransferType)) { _, _, _ in
            MPIStep(code: convoy_mpi_success())
        }
    }

    // MARK: Sub-groups

    /// Collective over this group (`MPI_Comm_split`): ranks with the same non-negative `color` form a group
    /// called `name` (default "<this group's name>.split(<color>)"), ordered by (`key`, rank); a negative
    /// colour gets nil.
    ///
    /// The ranks first meet in a timed, non-blocking all-gather of (colour, key) on this group's queue, so a
    /// rank that never calls `split` produces a timeout error rather than a hang, and the blocking
    /// `MPI_Comm_split` that follows returns promptly.
    public func split(color: Int, key: Int, name newName: String?) throws -> (any ProcessGroup)? {
        guard let color32 = Int32(exactly: color), let key32 = Int32(exactly: key) else {
            throw CommunicationError.invalidArgument("split of group '\(name)': color \(color) and key \(key) must fit in 32 bits")
        }
        let result = Mutex<MPIProcessGroup?>(nil)
        let size = self.size, parentName = self.name, parentWorldRanks = self.worldRanks
        let groupName = newName ?? "\(parentName).split(\(color))"
        let descriptor = CollectiveDescriptor(kind: .split, count: 0)
        let work = enqueue("\(descriptor.description) color \(color) key \(key)", reads: [], writes: [], role: .collective(descriptor)) { communicator, scratch, request in
            let mine = scratch.int32s([color32 < 0 ? -1 : color32, key32])
            let everyone = scratch.int32s(Array(repeating: 0, count: 2 * size))
            return MPIStep(code: MPI_Iallgather(mine, 2, convoy_mpi_int(), everyone, 2, convoy_mpi_int(), communicator, request)) {
                guard color32 >= 0 else {
                    // Still a participant in MPI_Comm_split, which is collective over the whole parent group.
                    var none: MPI_Comm? = convoy_mpi_comm_null()
                    let code = try MPIRuntime.blockingCall { MPI_Comm_split(communicator, convoy_mpi_undefined(), key32, &none) }
                    try MPIRuntime.checkCall(code, "MPI_Comm_split of group '\(parentName)'")
                    return
                }
                // Members as MPI_Comm_split orders them: same colour, by (key, parent rank).
                let members = (0..<size).filter { everyone[2 * $0] == color32 }
                    .sorted { (everyone[2 * $0 + 1], $0) < (everyone[2 * $1 + 1], $1) }
                var newCommunicator: MPI_Comm? = convoy_mpi_comm_null()
                let code = try MPIRuntime.blockingCall { MPI_Comm_split(communicator, color32, key32, &newCommunicator) }
                try MPIRuntime.checkCall(code, "MPI_Comm_split of group '\(parentName)'")
                guard let newCommunicator, newCommunicator != convoy_mpi_comm_null() else {
                    throw CommunicationError.backend("MPI_Comm_split of group '\(parentName)' returned no communicator for colour \(color)")
                }
                var newRank: Int32 = 0, newSize: Int32 = 0
                try MPIRuntime.withLock {
                    try MPIRuntime.checkLocked(MPI_Comm_set_errhandler(newCommunicator, convoy_mpi_errors_return()), "MPI_Comm_set_errhandler")
                    try MPIRuntime.checkLocked(MPI_Comm_rank(newCommunicator, &newRank), "MPI_Comm_rank")
                    try MPIRuntime.checkLocked(MPI_Comm_size(newCommunicator, &newSize), "MPI_Comm_size")
                }
                guard Int(newSize) == members.count else {
                    throw CommunicationError.backend("MPI_Comm_split of group '\(parentName)' made a group of \(newSize) ranks, but \(members.count) ranks asked for colour \(color)")
                }
                let group = MPIProcessGroup(
                    communicator: newCommunicator, name: groupName, rank: Int(newRank), size: Int(newSize),
                    worldRanks: members.map { parentWorldRanks[$0] }, freesCommunicator: true)
                result.withLock { $0 = group }
            }
        }
        try work.wait()
        return result.withLock { $0 }
    }

    // MARK: Issuing

    private func enqueue(_ what: @autoclosure @escaping () -> String, reads: [CommunicationBuffer], writes: [CommunicationBuffer], role: MPIOperation.Role,
                         start: @escaping (MPI_Comm, MPIScratch, UnsafeMutablePointer<MPI_Request?>) throws -> MPIStep) -> Work {
        let sequence = counters.withLock { counters in
            switch role {
            case .collective:
                defer { counters.collectives += 1 }
                return counters.collectives
            case .send:
                defer { counters.sends += 1 }
                return counters.sends
            case .receive, .probe:
                defer { counters.receives += 1 }
                return counters.receives
            }
        }
        // "all-reduce float32 count 7 sum #3 on group 'dp' (rank 1)", "receive #0 from rank 2 tag 5 (...) ...".
        let name = self.name, rank = self.rank
        let summary = { () -> String in
            let description = what()
            if case .collective = role { return "\(description) #\(sequence) on group '\(name)' (rank \(rank))" }
            let verb = description.prefix { $0 != " " }
            return "\(verb) #\(sequence)\(description.dropFirst(verb.count)) on group '\(name)' (rank \(rank))"
        }
        // The debug mode (read once, here): the ranks first exchange what they issued and compare.
        var check: [Int64]?
        if case .collective(let descriptor) = role, CollectiveDebugging.isEnabled {
            check = CollectiveDebugging.encode(descriptor, sequence: sequence)
        }
        let operation = MPIOperation(
            sequence: sequence, summary: summary, groupName: name, rank: rank, worldRanks: worldRanks, role: role,
            reads: reads.map(MemorySpan.init), writes: writes.map(MemorySpan.init),
            timeout: CommunicationTimeout.seconds, check: check, driver: engine, start: start)
        engine.submit(operation)
        return operation.work
    }

    private func rejected(_ what: String, _ problem: String) -> Work {
        let summary = "\(what) on group '\(name)' (rank \(rank) of \(size))"
        return Work.completed(summary, error: CommunicationError.invalidArgument("\(summary): \(problem)"))
    }

    private func dtypeProblem(_ input: CommunicationBuffer, _ output: CommunicationBuffer) -> String? {
        input.dtype == output.dtype ? nil
            : "input is \(input.dtype) but output is \(output.dtype); both buffers must have the same dtype (convert one first)"
    }

    private func countProblem(_ count: Int, _ role: String) -> String? {
        count <= Int(Int32.max) ? nil
            : "the \(role) has \(count) elements, more than MPI's 32-bit counts allow (\(Int32.max)); split it into smaller operations"
    }

    private func rankProblem(_ peer: Int, _ role: String) -> String? {
        (0..<size).contains(peer) ? nil : "\(role) rank \(peer) is outside the group (ranks 0..<\(size))"
    }

    /// A point-to-point peer must be another rank of the group: a message to oneself would only copy memory,
    /// and the Local backend refuses it too, so code that relies on it would not run there.
    private func peerProblem(_ peer: Int, _ role: String) -> String? {
        if let problem = rankProblem(peer, role) { return problem }
        guard peer == rank else { return nil }
        return "\(role) rank \(peer) is this rank itself; point-to-point messages go between two different ranks of the group (copy the buffer locally instead)"
    }

    private func tagProblem(_ tag: Int) -> String? {
        let upperBound = MPIRuntime.shared?.tagUpperBound ?? 32767
        return (0...upperBound).contains(tag) ? nil : "tag \(tag) must be in 0...\(upperBound) (MPI_TAG_UB)"
    }
}
