import CMPI
import Foundation
import Synchronization

/// The FIFO queue of one group, and the threads that move its operations through MPI.
///
/// Who drives the operations (starts them, tests them with `MPI_Test`, enforces their deadlines and finishes
/// their ``Work`` in issue order — one ``step(now:)``):
/// - The **issuing thread** starts an operation at once when no other thread is stepping (``submit(_:)``), so
///   the transfer begins without waiting for another thread to wake.
/// - A **waiting thread** (``Work/wait(timeout:)``) polls the group itself until its operation completes
///   (``drive(until:deadline:)``), as a blocking `MPI_Allreduce` would; meanwhile the communication thread
///   sleeps, so a rank has one thread polling MPI rather than two competing for its core, and the result
///   needs no hand-off to reach the waiter.
/// - The group's **communication thread** polls when nobody waits: operations then progress while the caller
///   computes (gradient buckets during backward), since Open MPI advances a non-blocking collective only
///   inside MPI calls.
///
/// One lock (`stepLock`) makes these take turns on the stepping state; every MPI call also holds the
/// process-wide MPI lock (``MPIRuntime``).
final class MPICommunicationEngine: WorkDriver, @unchecked Sendable {
    private let communicator: MPI_Comm
    private let groupName: String
    private let groupSize: Int
    private let freesCommunicator: Bool

    // Shared with issuing and waiting threads, guarded by `condition`.
    private let condition = NSCondition()
    private var submitted: [MPIOperation] = []
    private var shuttingDown = false
    /// Threads polling the group in ``drive(until:deadline:)``; the communication thread sleeps while any do.
    private var drivers = 0
    /// Set when the communication thread has something to look at: a submission (which the issuing thread may
    /// already have started, so `submitted` can be empty again by the time the thread wakes) or operations a
    /// driver left in flight.
    private var wakeRequested = false
    /// When the last operation was submitted: while that is recent the communication thread naps instead of
    /// sleeping until signalled (see ``sleepLocked()``).
    private var lastSubmission = ContinuousClock.now
    /// Whether the communication thread sleeps until signalled, so a submission must wake it.
    private var sleepsUntilSignalled = false

    // The stepping state, guarded by `stepLock` (whoever holds it runs ``step(now:)``).
    private let stepLock = NSLock()
    private var waiting: [MPIOperation] = []
    private var running: [MPIOperation] = []
    /// Timed-out operations MPI still holds; tested now and then so their requests are released if they finish.
    private var abandoned: [MPIOperation] = []
    private var brokenBy: String?

    /// How long a poller tests without sleeping after the last sign of progress (the communication thread
    /// yields between tests, a driving waiter does not), before it sleeps between tests. Open MPI advances a non-blocking collective only inside MPI calls, so polling tightly
    /// while data moves keeps large transfers as fast as a blocking call (which spins as well).
    private static let spinWindow = Duration.milliseconds(20)
    /// Microseconds to sleep between tests once `idle` has passed without progress (beyond the spin window).
    /// Short at first, since a large transfer is still moving and Open MPI advances it only inside MPI calls;
    /// longer once nothing has happened for a while, because then a peer is late (a pipeline bubble, a
    /// straggler, a stopped process) and a tight poll would burn a core for nothing until the timeout.
    static func pollInterval(afterIdling idle: Duration) -> UInt32 {
        idle < .milliseconds(100) ? 50 : idle < .seconds(1) ? 250 : 1000
    }

    /// Waits before the next test, `idle` after the last progress.
    private static func pause(afterIdling idle: Duration) {
        if idle < spinWindow { sched_yield() } else { usleep(pollInterval(afterIdling: idle)) }
    }

    /// How long an idle communication thread keeps looking for new work before it sleeps on the queue.
    private static let idleSpinWindow = Duration.microseconds(200)
    /// How long the communication thread naps while operations keep coming (also while a waiter drives the
    /// group); it then looks for work a submission left it without being signalled. Short on purpose: each
    /// wake-up takes a core from a spinning driver for a moment (a few percent of a 1 MiB all-reduce over
    /// shared memory), but naps of 5 ms made a 1 MiB all-reduce across a TCP link between network namespaces
    /// 5× slower: the frequent timer interrupts are what let the kernel run its deferred network work while
    /// both cores spin in user space.
    private static let napSeconds = 0.0005
    /// How long after the last submission the communication thread stops napping and sleeps until signalled.
    private static let napsFor = Duration.seconds(1)

    init(communicator: MPI_Comm, groupName: String, groupSize: Int, freesCommunicator: Bool) {
        self.communicator = communicator
        self.groupName = groupName
        self.groupSize = groupSize
        self.freesCommunicator = freesCommunicator
        let thread = Thread { [self] in run() }
        thread.name = "convoy-mpi-\(groupName)"
        thread.start()
    }

    /// Queues `operation` and, when no other thread is stepping, starts it on the calling thread.
    func submit(_ operation: MPIOperation) {
        condition.lock()
        submitted.append(operation)
        wakeRequested = true
        let now = ContinuousClock.now
        lastSubmission = now
        // A napping communication thread finds the flag by itself within a nap. Signalling it on every
        // submission cost a wake-up and a context switch per operation, on the core the waiter polls from:
        // several percent of a 1 MiB all-reduce.
        if sleepsUntilSignalled { condition.signal() }
        condition.unlock()
        guard stepLock.try() else { return }  // the stepping thread admits it in its next step
        admitSubmitted()
        _ = startWaiting(now: now)
        stepLock.unlock()
    }

    /// Lets the thread finish the queued work, free the communicator and exit.
    func shutDown() {
        condition.lock()
        shuttingDown = true
        condition.signal()
        condition.unlock()
    }

    /// Steps the group on the calling thread until `work` has finished or `deadline` passes (the operations'
    /// own deadlines are enforced in the steps, so an operation fails with its precise timeout first).
    func drive(until work: Work, deadline: ContinuousClock.Instant) {
        condition.lock()
        drivers += 1
        condition.unlock()
        var lastProgress = ContinuousClock.now
        while !work.isCompleted {
            // One clock reading per round serves the deadlines and the spin window (profiles of small
            // operations showed three readings per round at 7 % of the rank's time).
            let now = ContinuousClock.now
            stepLock.lock()
            admitSubmitted()
            let progressed = step(now: now)
            stepLock.unlock()
            if progressed {
                lastProgress = now
            } else if now >= deadline {
                break
            } else if now - lastProgress >= Self.spinWindow {
                // Within the spin window the waiter tests back to back, as a blocking MPI call does: a transfer
                // moves only while some thread is inside MPI, and a yield between tests slows it measurably.
                // (Open MPI yields inside its own progress loop when the node is oversubscribed.)
                usleep(Self.pollInterval(afterIdling: now - lastProgress))
            }
        }
        stepLock.lock()
        let stillBusy = !waiting.isEmpty || !running.isEmpty || !abandoned.isEmpty
        stepLock.unlock()
        condition.lock()
        drivers -= 1
        // The communication thread takes over what remains in flight; with nothing left it sleeps on until
        // the next submission wakes it.
        if drivers == 0 && stillBusy {
            wakeRequested = true
            condition.signal()
        }
        condition.unlock()
    }

    /// Moves the submitted operations, in issue order, to the end of `waiting`. Call it holding `stepLock`,
    /// so that two threads never interleave two batches.
    private func admitSubmitted() {
        condition.lock()
        if !submitted.isEmpty {
            waiting.append(contentsOf: submitted)
            submitted.removeAll(keepingCapacity: true)
        }
        condition.unlock()
    }

    /// The communication thread: polls while operations are in flight and nobody waits on them; sleeps while a
    /// waiter drives the group, and when there is nothing to do.
    private func run() {
        var lastProgress = ContinuousClock.now
        while true {
            condition.lock()
            while drivers > 0 && !shuttingDown { sleepLocked() }
            let stopping = shuttingDown
            let arrived = wakeRequested
            wakeRequested = false
            condition.unlock()

            stepLock.lock()
            admitSubmitted()
            let busy = !waiting.isEmpty || !running.isEmpty
            if stopping && !busy {
                release()
                stepLock.unlock()
                return
            }
            let progressed = (busy || !abandoned.isEmpty) && step(now: .now)
            let holdsAbandoned = !abandoned.isEmpty
            stepLock.unlock()

            if progressed || arrived {
                lastProgress = .now
            } else if busy {
                Self.pause(afterIdling: ContinuousClock.now - lastProgress)
            } else if ContinuousClock.now - lastProgress < Self.idleSpinWindow {
                // Work often comes in bursts (gradient buckets): catch the next item without a wake-up.
                sched_yield()
            } else {
                condition.lock()
                if holdsAbandoned {
                    if !wakeRequested && !shuttingDown && drivers == 0 { _ = condition.wait(until: Date(timeIntervalSinceNow: 0.01)) }
                } else {
                    while !wakeRequested && !shuttingDown && drivers == 0 { sleepLocked() }
                }
                condition.unlock()
            }
        }
    }

    /// Sleeps on `condition`, which the caller holds, until signalled or, while operations keep being
    /// submitted, for one nap; the caller then checks again what it waits for. Napping lets a
    /// submission skip the signal (``submit(_:)``); after a second without submissions the thread sleeps until
    /// signalled, so an idle group or a long wait on a late peer costs no CPU.
    private func sleepLocked() {
        if ContinuousClock.now - lastSubmission < Self.napsFor {
            _ = condition.wait(until: Date(timeIntervalSinceNow: Self.napSeconds))
        } else {
            sleepsUntilSignalled = true
            condition.wait()
            sleepsUntilSignalled = false
        }
    }

    /// Starts what may start, tests what runs, enforces deadlines (against `now`) and hands out finished work
    /// in issue order. Returns whether anything changed.
    private func step(now: ContinuousClock.Instant) -> Bool {
        var progressed = startWaiting(now: now)
        progressed = poll() || progressed
        progressed = enforceDeadlines(now: now) || progressed
        while let first = running.first, first.phase == .done {
            running.removeFirst()
            first.work.finish(error: first.failure, probed: first.probed)
            progressed = true
        }
        return progressed
    }

    private func startWaiting(now: ContinuousClock.Instant) -> Bool {
        var started = false
        while let operation = waiting.first {
            if let brokenBy {
                operation.failure = CommunicationError.peerFailed("\(operation.summary) was not started: group '\(groupName)' is unusable since \(brokenBy)")
            } else if now >= operation.deadline {
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
        // Called in a tight loop while a waiter polls: no allocation unless something finishes.
        func isActive(_ operation: MPIOperation) -> Bool { operation.phase == .running || operation.phase == .cancelling }
        guard running.contains(where: isActive) || !abandoned.isEmpty else { return false }
        var finished: [MPIOperation] = []
        var changed = false
        do {
            try MPIRuntime.withLock {
                for operation in running where isActive(operation) {
                    var flag: Int32 = 0
                    if case .probe(let tag, let datatype) = operation.role {
                        let code = MPI_Iprobe(convoy_mpi_any_source(), Int32(tag), communicator, &flag, &operation.status)
                        if code != convoy_mpi_success() {
                            operation.failure = MPIRuntime.backendErrorLocked(code: code, operation: operation.summary)
                            operation.phase = .done
                            changed = true
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
                        changed = true
                        continue
                    }
                    guard flag != 0 else { continue }
                    changed = true
                    if operation.checking {
                        finishCheck(operation)
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
            for operation in running where isActive(operation) {
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
        return changed || !finished.isEmpty
    }

    private func enforceDeadlines(now: ContinuousClock.Instant) -> Bool {
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

