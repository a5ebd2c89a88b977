import CMPI
import ConvoyTensor
import Foundation

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
    /// "all-reduce float32 count 7 sum #3 on group 'dp' (rank 1)", built when first needed (``Work/summary``).
    var summary: String { work.summary }
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

    init(sequence: Int, summary: @escaping () -> String, groupName: String, rank: Int, worldRanks: [Int], role: Role, reads: [MemorySpan],
         writes: [MemorySpan], timeout: Double, check: [Int64]? = nil, driver: MPICommunicationEngine,
         start: @escaping (MPI_Comm, MPIScratch, UnsafeMutablePointer<MPI_Request?>) throws -> MPIStep) {
        self.sequence = sequence
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
        self.work = Work(driver: driver, summary: summary)
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

