import CMPI
import Foundation
import Synchronization

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

