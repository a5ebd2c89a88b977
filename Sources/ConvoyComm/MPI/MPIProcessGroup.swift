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
        let what = "send to rank \(destination) tag \(tag) (\(buffer.dtype) count \(buffer.count))"
        if let problem = peerProblem(destination, "destination") ?? tagProblem(tag) ?? countProblem(buffer.count, "buffer") { return rejected(what, problem) }
        return enqueue(what, reads: [buffer], writes: [], role: .send(peer: destination, tag: tag)) { communicator, scratch, request in
            MPIStep(code: MPI_Isend(scratch.address(of: buffer), Int32(buffer.count), buffer.dtype.mpiTransferType, Int32(destination), Int32(tag), communicator, request))
        }
    }

    public func receiveAsync(_ buffer: CommunicationBuffer, from source: Int, tag: Int) -> Work {
        let what = "receive from rank \(source) tag \(tag) (\(buffer.dtype) count \(buffer.count))"
        if let problem = peerProblem(source, "source") ?? tagProblem(tag) ?? countProblem(buffer.count, "buffer") { return rejected(what, problem) }
        return enqueue(what, reads: [], writes: [buffer], role: .receive(peer: source, tag: tag, count: buffer.count, datatype: buffer.dtype.mpiTransferType)) { communicator, scratch, request in
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

    private func enqueue(_ what: String, reads: [CommunicationBuffer], writes: [CommunicationBuffer], role: MPIOperation.Role,
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
        let summary: String
        if case .collective = role {
            summary = "\(what) #\(sequence) on group '\(name)' (rank \(rank))"
        } else {
            let verb = what.prefix { $0 != " " }
            summary = "\(verb) #\(sequence)\(what.dropFirst(verb.count)) on group '\(name)' (rank \(rank))"
        }
        // The debug mode (read once, here): the ranks first exchange what they issued and compare.
        var check: [Int64]?
        if case .collective(let descriptor) = role, CollectiveDebugging.isEnabled {
            check = CollectiveDebugging.encode(descriptor, sequence: sequence)
        }
        let operation = MPIOperation(
            sequence: sequence, summary: summary, groupName: name, rank: rank, worldRanks: worldRanks, role: role,
            reads: reads.map(MemorySpan.init), writes: writes.map(MemorySpan.init),
            timeout: CommunicationTimeout.seconds, check: check, start: start)
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

// MARK: - The communication thread

/// What starting an operation produced: MPI's return code and what to do once the request completes.
struct MPIStep {
    var code: Int32
    var completion: (() throws -> Void)?

    init(code: Int32, completion: (() throws -> Void)? = nil) {
        self.code = code
        self.completion = completion
    }
}

/// A queued or running operation; owned by its group's communication thread once submitted.
final class MPIOperation: @unchecked Sendable {
    enum Role {
        /// A collective, with what every rank must agree on (exchanged first in the debug mode).
        case collective(CollectiveDescriptor)
        case send(peer: Int, tag: Int)
        case receive(peer: Int, tag: Int, count: Int, datatype: MPI_Datatype)
        /// Waits for a message from any rank; polled with `MPI_Iprobe` rather than started.
        case probe(tag: Int, datatype: MPI_Datatype)
    }
    enum Phase { case waiting, running, cancelling, done }

    let sequence: Int
    let summary: String
    let groupName: String
    let rank: Int
    let worldRanks: [Int]
    let role: Role
    let reads: [MemorySpan]
    let writes: [MemorySpan]
    let timeout: Double
    let deadline: ContinuousClock.Instant
    /// In the debug mode, this rank's encoded descriptor and sequence number (``CollectiveDebugging``): the
    /// ranks all-gather it and compare before the operation itself starts.
    let check: [Int64]?
    let start: (MPI_Comm, MPIScratch, UnsafeMutablePointer<MPI_Request?>) throws -> MPIStep
    let work: Work
    let scratch = MPIScratch()

    var phase = Phase.waiting
    var request: MPI_Request? = convoy_mpi_request_null()
    var status = MPI_Status()
    var completion: (() throws -> Void)?
    var failure: Error?
    /// What a probe found.
    var probed: ProbedMessage?
    /// Whether `request` is the debug check's all-gather (into `checkTable`) rather than the operation itself.
    var checking = false
    var checkTable: UnsafeMutablePointer<Int64>?

    init(sequence: Int, summary: String, groupName: String, rank: Int, worldRanks: [Int], role: Role, reads: [MemorySpan],
         writes: [MemorySpan], timeout: Double, check: [Int64]? = nil,
         start: @escaping (MPI_Comm, MPIScratch, UnsafeMutablePointer<MPI_Request?>) throws -> MPIStep) {
        self.sequence = sequence
        self.summary = summary
        self.groupName = groupName
        self.rank = rank
        self.worldRanks = worldRanks
        self.role = role
        self.reads = reads
        self.writes = writes
        self.timeout = timeout
        self.deadline = .now + .seconds(timeout)
        self.check = check
        self.start = start
        self.work = Work(summary: summary)
    }

    /// Whether running this and `other` at the same time could let one see the other's half-done writes.
    var isCollective: Bool {
        if case .collective = role { return true }
        return false
    }

    func conflicts(with other: MPIOperation) -> Bool {
        func touches(_ spans: [MemorySpan], _ others: [MemorySpan]) -> Bool { spans.contains { span in others.contains { span.overlaps($0) } } }
        return touches(writes, other.reads + other.writes) || touches(other.writes, reads)
    }

    func timeoutError() -> CommunicationError {
        let limit = "did not complete within \(timeout) s (CommunicationTimeout; CONVOY_COMM_TIMEOUT)"
        switch role {
        case .collective where checking:
            return .timedOut("\(summary) \(limit) while the ranks exchanged descriptors for the debug check (CONVOY_DEBUG_COLLECTIVES): some rank of '\(groupName)' has not issued its collective #\(sequence) (MPI cannot tell which). The group is unusable from now on.")
        case .collective where check != nil:
            return .timedOut("\(summary) \(limit), although every rank of '\(groupName)' issued it with the same arguments (checked: CONVOY_DEBUG_COLLECTIVES). The group is unusable from now on.")
        case .collective:
            return .timedOut("\(summary) \(limit). MPI cannot tell which ranks of the group have not arrived; rerun with CONVOY_DEBUG_COLLECTIVES=1 to check that every rank of '\(groupName)' issues the same operations in the same order. The group is unusable from now on.")
        case .send(let peer, let tag):
            return .timedOut("\(summary) \(limit): rank \(peer) (world rank \(worldRanks[peer])) did not post a matching receive with tag \(tag). The group is unusable from now on.")
        case .receive(let peer, let tag, _, _):
            return .timedOut("\(summary) \(limit): no message from rank \(peer) (world rank \(worldRanks[peer])) with tag \(tag) arrived; the receive was cancelled and the group stays usable.")
        case .probe(let tag, _):
            let others = (0..<worldRanks.count).filter { $0 != rank }
            return .timedOut("\(summary) \(limit): none of ranks \(others) (world ranks \(others.map { worldRanks[$0] })) sent a message with tag \(tag).")
        }
    }
}

/// The FIFO queue and communication thread of one group.
final class MPICommunicationEngine: @unchecked Sendable {
    private let communicator: MPI_Comm
    private let groupName: String
    private let groupSize: Int
    private let freesCommunicator: Bool

    // Shared with issuing threads, guarded by `condition`.
    private let condition = NSCondition()
    private var submitted: [MPIOperation] = []
    private var shuttingDown = false

    // Owned by the communication thread.
    private var waiting: [MPIOperation] = []
    private var running: [MPIOperation] = []
    /// Timed-out operations MPI still holds; tested now and then so their requests are released if they finish.
    private var abandoned: [MPIOperation] = []
    private var brokenBy: String?

    /// How long the thread polls with only a yield between tests after the last sign of progress before it
    /// sleeps between tests. Open MPI advances a non-blocking collective only inside MPI calls, so polling
    /// tightly while data moves keeps large transfers as fast as a blocking call (which spins as well).
    private static let spinWindow = Duration.milliseconds(20)
    /// Microseconds to sleep between tests once `idle` has passed without progress (beyond the spin window).
    /// Short at first, since a large transfer is still moving and Open MPI advances it only inside MPI calls;
    /// longer once nothing has happened for a while, because then a peer is late (a pipeline bubble, a
    /// straggler, a stopped process) and a tight poll would burn a core for nothing until the timeout.
    static func pollInterval(afterIdling idle: Duration) -> UInt32 {
        idle < .milliseconds(100) ? 50 : idle < .seconds(1) ? 250 : 1000
    }

    /// How long an idle thread keeps looking for new work before it sleeps on the queue.
    private static let idleSpinWindow = Duration.microseconds(200)

    init(communicator: MPI_Comm, groupName: String, groupSize: Int, freesCommunicator: Bool) {
        self.communicator = communicator
        self.groupName = groupName
        self.groupSize = groupSize
        self.freesCommunicator = freesCommunicator
        let thread = Thread { [self] in run() }
        thread.name = "convoy-mpi-\(groupName)"
        thread.start()
    }

    func submit(_ operation: MPIOperation) {
        condition.lock()
        submitted.append(operation)
        condition.signal()
        condition.unlock()
    }

    /// Lets the thread finish the queued work, free the communicator and exit.
    func shutDown() {
        condition.lock()
        shuttingDown = true
        condition.signal()
        condition.unlock()
    }

    private func run() {
        var lastProgress = ContinuousClock.now
        while true {
            condition.lock()
            if submitted.isEmpty && waiting.isEmpty && running.isEmpty && !shuttingDown
                && ContinuousClock.now - lastProgress < Self.idleSpinWindow {
                // Work often comes in bursts (gradient buckets): catch the next item without a wake-up.
                condition.unlock()
                sched_yield()
                continue
            }
            while submitted.isEmpty && waiting.isEmpty && running.isEmpty && !shuttingDown {
                if abandoned.isEmpty {
                    condition.wait()
                } else {
                    _ = condition.wait(until: Date(timeIntervalSinceNow: 0.01))
                    break
                }
            }
            let arrivals = submitted
            submitted.removeAll(keepingCapacity: true)
            let stopping = shuttingDown
            condition.unlock()

            if !arrivals.isEmpty {
                waiting.append(contentsOf: arrivals)
                lastProgress = .now
            }
            if stopping && waiting.isEmpty && running.isEmpty {
                release()
                return
            }
            if step() {
                lastProgress = .now
            } else if !waiting.isEmpty || !running.isEmpty {
                let idle = ContinuousClock.now - lastProgress
                if idle < Self.spinWindow { sched_yield() } else { usleep(Self.pollInterval(afterIdling: idle)) }
            }
        }
    }

    /// Starts what may start, tests what runs, enforces deadlines and hands out finished work in issue order.
    /// Returns whether anything changed.
    private func step() -> Bool {
        var progressed = startWaiting()
        progressed = poll() || progressed
        progressed = enforceDeadlines() || progressed
        while let first = running.first, first.phase == .done {
            running.removeFirst()
            first.work.finish(error: first.failure, probed: first.probed)
            progressed = true
        }
        return progressed
    }

    private func startWaiting() -> Bool {
        var started = false
        while let operation = waiting.first {
            if let brokenBy {
                operation.failure = CommunicationError.peerFailed("\(operation.summary) was not started: group '\(groupName)' is unusable since \(brokenBy)")
            } else if ContinuousClock.now >= operation.deadline {
                if let blocker = running.first(where: { $0.phase != .done && $0.conflicts(with: operation) }) {
                    operation.failure = CommunicationError.timedOut("\(operation.summary) did not start within \(operation.timeout) s: it uses the memory of \(blocker.summary), which was still in flight")
                } else {
                    let checked = running.first { $0.checking }
                    operation.failure = CommunicationError.timedOut("\(operation.summary) did not start within \(operation.timeout) s: it queued behind \(checked?.summary ?? "an earlier operation"), whose debug check (CONVOY_DEBUG_COLLECTIVES) had not completed")
                }
            } else if running.contains(where: { $0.phase != .done && $0.conflicts(with: operation) }) {
                break  // keeps issue order: nothing behind it starts either
            } else if operation.isCollective && running.contains(where: { $0.checking }) {
                // A collective starts only once the one before it has passed its check and started, so every
                // rank starts the checks and the collectives on the communicator in the same order. (Sends and
                // receives may go ahead: MPI matches them apart from collectives.)
                break
            } else {
                do {
                    try MPIRuntime.withLock {
                        if let check = operation.check {
                            try startCheck(operation, check)
                        } else {
                            let step = try operation.start(communicator, operation.scratch, &operation.request)
                            try MPIRuntime.checkLocked(step.code, "starting \(operation.summary)")
                            operation.completion = step.completion
                        }
                    }
                    operation.phase = .running
                } catch {
                    operation.failure = error
                }
            }
            if operation.failure != nil { operation.phase = .done }
            waiting.removeFirst()
            running.append(operation)
            started = true
        }
        return started
    }

    /// Starts the debug check of `operation`: a non-blocking all-gather of every rank's encoded descriptor
    /// (Int64 fields, moved as pairs of `MPI_INT`). Call it under the MPI lock.
    private func startCheck(_ operation: MPIOperation, _ check: [Int64]) throws {
        let fields = Int32(2 * check.count)
        let mine = operation.scratch.int64s(check)
        let table = operation.scratch.int64s(Array(repeating: 0, count: check.count * groupSize))
        try MPIRuntime.checkLocked(
            MPI_Iallgather(mine, fields, convoy_mpi_int(), table, fields, convoy_mpi_int(), communicator, &operation.request),
            "starting the debug check (CONVOY_DEBUG_COLLECTIVES) of \(operation.summary)")
        operation.checkTable = table
        operation.checking = true
    }

    /// The debug check of `operation` has completed: compares the gathered table and either fails the
    /// operation (a mismatch, seen identically by every rank, breaks the group) or starts it. Call it under
    /// the MPI lock.
    private func finishCheck(_ operation: MPIOperation) {
        operation.checking = false
        let table = Array(UnsafeBufferPointer(start: operation.checkTable!, count: CollectiveDebugging.encodedFields * groupSize))
        if let message = CollectiveDebugging.mismatch(in: table, size: groupSize, sequence: operation.sequence, group: groupName) {
            operation.failure = CommunicationError.mismatch(message)
            operation.phase = .done
            if brokenBy == nil { brokenBy = "the debug check found a collective mismatch in \(message)" }
            return
        }
        do {
            let step = try operation.start(communicator, operation.scratch, &operation.request)
            try MPIRuntime.checkLocked(step.code, "starting \(operation.summary)")
            operation.completion = step.completion
        } catch {
            operation.failure = error
            operation.phase = .done
        }
    }

    private func poll() -> Bool {
        let active = running.filter { $0.phase == .running || $0.phase == .cancelling }
        guard !active.isEmpty || !abandoned.isEmpty else { return false }
        var finished: [MPIOperation] = []
        var checked = false
        do {
            try MPIRuntime.withLock {
                for operation in active {
                    var flag: Int32 = 0
                    if case .probe(let tag, let datatype) = operation.role {
                        let code = MPI_Iprobe(convoy_mpi_any_source(), Int32(tag), communicator, &flag, &operation.status)
                        if code != convoy_mpi_success() {
                            operation.failure = MPIRuntime.backendErrorLocked(code: code, operation: operation.summary)
                            operation.phase = .done
                        } else if flag != 0 {
                            var count: Int32 = 0
                            _ = MPI_Get_count(&operation.status, datatype, &count)
                            operation.probed = ProbedMessage(source: Int(convoy_mpi_status_source(&operation.status)), count: Int(count))
                            finished.append(operation)
                        }
                        continue
                    }
                    let code = MPI_Test(&operation.request, &flag, &operation.status)
                    if code != convoy_mpi_success() {
                        operation.failure = MPIRuntime.backendErrorLocked(code: code, operation: operation.summary)
                        operation.phase = .done
                        continue
                    }
                    guard flag != 0 else { continue }
                    if operation.checking {
                        finishCheck(operation)
                        checked = true
                        continue
                    }
                    if operation.phase == .cancelling {
                        var cancelled: Int32 = 0
                        _ = MPI_Test_cancelled(&operation.status, &cancelled)
                        if cancelled != 0 {
                            operation.failure = operation.timeoutError()
                            operation.phase = .done
                            continue
                        }
                        // The message arrived before the cancellation took effect: the receive succeeded.
                    }
                    if case .receive(_, _, let expected, let datatype) = operation.role {
                        var received: Int32 = 0
                        _ = MPI_Get_count(&operation.status, datatype, &received)
                        if Int(received) != expected {
                            operation.failure = CommunicationError.mismatch("\(operation.summary): the message holds \(received) elements but the receive buffer \(expected); sender and receiver must agree on the count")
                            operation.phase = .done
                            continue
                        }
                    }
                    finished.append(operation)
                }
                abandoned.removeAll { operation in
                    var flag: Int32 = 0
                    return MPI_Test(&operation.request, &flag, convoy_mpi_status_ignore()) != convoy_mpi_success() || flag != 0
                }
            }
        } catch {
            // MPI was finalized underneath us: nothing in flight can complete any more.
            for operation in active where operation.phase != .done {
                operation.failure = CommunicationError.backend("\(operation.summary) was still in flight when MPI was finalized: \(error)")
                operation.phase = .done
            }
            abandoned.removeAll()
            return true
        }
        for operation in finished {
            do { try operation.completion?() } catch { operation.failure = error }
            operation.phase = .done
        }
        return checked || !finished.isEmpty || active.contains { $0.phase == .done }
    }

    private func enforceDeadlines() -> Bool {
        let now = ContinuousClock.now
        var changed = false
        for operation in running where operation.phase == .running && now >= operation.deadline {
            changed = true
            if case .probe = operation.role {
                // Nothing was started in MPI: the probe just stops looking, and the group stays usable.
                operation.failure = operation.timeoutError()
                operation.phase = .done
                continue
            }
            if case .receive = operation.role {
                // An unmatched receive can be withdrawn; the next poll sees whether the cancellation won.
                let code = (try? MPIRuntime.withLock { MPI_Cancel(&operation.request) }) ?? convoy_mpi_success()
                if code == convoy_mpi_success() {
                    operation.phase = .cancelling
                    continue
                }
            }
            // MPI offers no way to withdraw a started collective (or, portably, a send): it may still use the
            // memory, so the request is kept and the group refuses further work.
            operation.failure = operation.timeoutError()
            operation.phase = .done
            abandoned.append(operation)
            brokenBy = operation.summary + " timed out"
        }
        for operation in running where operation.phase == .cancelling && now >= operation.deadline + .seconds(5) {
            operation.failure = operation.timeoutError()
            operation.phase = .done
            abandoned.append(operation)
            brokenBy = operation.summary + " timed out and could not be cancelled"
            changed = true
        }
        return changed
    }

    private func release() {
        guard freesCommunicator, brokenBy == nil else { return }
        var handle: MPI_Comm? = communicator
        _ = try? MPIRuntime.withLock { MPI_Comm_free(&handle) }
    }
}

// MARK: - Helpers

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
