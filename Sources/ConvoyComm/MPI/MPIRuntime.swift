import CMPI
import Foundation

/// The process-wide lifetime of Open MPI: initialisation (once), the world group, finalisation (once, also at
/// exit) and the one lock every MPI call in Convoy goes through.
///
/// `MPI_Init_thread` asks for `MPI_THREAD_MULTIPLE`, because each ``MPIProcessGroup`` drives its operations
/// from its own communication thread. Whatever level the library provides, Convoy makes every MPI call while
/// holding one process-wide lock — which is exactly what `MPI_THREAD_SERIALIZED` requires and costs little
/// under `MPI_THREAD_MULTIPLE`, since the calls it guards never block: operations are started non-blocking
/// and completed by polling `MPI_Test`, so a stuck peer never holds the lock and timeouts stay enforceable.
///
/// Every communicator Convoy uses has `MPI_ERRORS_RETURN` set, so MPI failures come back as
/// ``CommunicationError/backend(_:)`` with the library's own message instead of aborting the job.
public final class MPIRuntime: @unchecked Sendable {
    /// MPI's thread-support levels, in increasing order.
    public enum ThreadLevel: Int, Sendable, Comparable, CustomStringConvertible {
        case single, funneled, serialized, multiple

        init(mpiValue: Int32) {
            switch mpiValue {
            case convoy_mpi_thread_multiple(): self = .multiple
            case convoy_mpi_thread_serialized(): self = .serialized
            case convoy_mpi_thread_funneled(): self = .funneled
            default: self = .single
            }
        }

        public static func < (lhs: ThreadLevel, rhs: ThreadLevel) -> Bool { lhs.rawValue < rhs.rawValue }

        public var description: String {
            switch self {
            case .single: return "MPI_THREAD_SINGLE"
            case .funneled: return "MPI_THREAD_FUNNELED"
            case .serialized: return "MPI_THREAD_SERIALIZED"
            case .multiple: return "MPI_THREAD_MULTIPLE"
            }
        }
    }

    /// The thread-support level the library provided (Convoy asks for ``ThreadLevel/multiple``).
    public let threadLevel: ThreadLevel
    /// This process's rank in `MPI_COMM_WORLD`.
    public let worldRank: Int
    /// Number of processes in `MPI_COMM_WORLD`.
    public let worldSize: Int
    /// The largest message tag the library accepts (`MPI_TAG_UB`, at least 32767).
    public let tagUpperBound: Int
    /// Whether Convoy called `MPI_Init_thread` (and so owns `MPI_Finalize`), rather than finding MPI already
    /// initialised by someone else in the process.
    public let ownsInitialization: Bool
    private let world: MPIProcessGroup

    private init(threadLevel: ThreadLevel, worldRank: Int, worldSize: Int, tagUpperBound: Int, ownsInitialization: Bool, world: MPIProcessGroup) {
        self.threadLevel = threadLevel
        self.worldRank = worldRank
        self.worldSize = worldSize
        self.tagUpperBound = tagUpperBound
        self.ownsInitialization = ownsInitialization
        self.world = world
    }

    // MARK: Process-wide state (guarded by `lock`)

    /// Serialises every MPI call of the process (see the type's documentation).
    private static let lock = NSLock()
    nonisolated(unsafe) private static var current: MPIRuntime?
    nonisolated(unsafe) private static var finalized = false

    /// Whether this process was started by Open MPI's `mpirun` (its environment names the world size and rank).
    public static var isLaunchedByMPI: Bool {
        let environment = ProcessInfo.processInfo.environment
        return environment["OMPI_COMM_WORLD_SIZE"] != nil && environment["OMPI_COMM_WORLD_RANK"] != nil
    }

    /// The runtime, if ``initialize()`` has run and ``finalize()`` has not.
    public static var shared: MPIRuntime? {
        lock.lock()
        defer { lock.unlock() }
        return finalized ? nil : current
    }

    /// Whether `MPI_Finalize` has run; no MPI call is possible afterwards.
    public static var isFinalized: Bool {
        lock.lock()
        defer { lock.unlock() }
        return finalized
    }

    /// Initialises MPI for this process (the first call; later calls return the same runtime), duplicates
    /// `MPI_COMM_WORLD` for Convoy's own traffic and registers `MPI_Finalize` to run at exit.
    ///
    /// MPI can be initialised only once per process: after ``finalize()`` this throws.
    public static func initialize() throws -> MPIRuntime {
        lock.lock()
        defer { lock.unlock() }
        if let current, !finalized { return current }
        if finalized {
            throw CommunicationError.backend("MPI was already finalized in this process and cannot be initialized again; initialize it once at start-up and keep the runtime")
        }

        var alreadyInitialized: Int32 = 0
        _ = MPI_Initialized(&alreadyInitialized)
        var provided: Int32 = 0
        if alreadyInitialized == 0 {
            preferFastNonBlockingAllReduce()
            let code = MPI_Init_thread(nil, nil, convoy_mpi_thread_multiple(), &provided)
            guard code == convoy_mpi_success() else {
                throw CommunicationError.backend("MPI_Init_thread failed with MPI error code \(code); is this binary linked against the Open MPI that mpirun belongs to?")
            }
        } else {
            _ = MPI_Query_thread(&provided)
        }

        // Errors come back as codes on the world communicator (and on everything derived from it).
        try checkLocked(MPI_Comm_set_errhandler(convoy_mpi_comm_world(), convoy_mpi_errors_return()), "MPI_Comm_set_errhandler(MPI_COMM_WORLD)")
        var rank: Int32 = 0, size: Int32 = 0
        try checkLocked(MPI_Comm_rank(convoy_mpi_comm_world(), &rank), "MPI_Comm_rank(MPI_COMM_WORLD)")
        try checkLocked(MPI_Comm_size(convoy_mpi_comm_world(), &size), "MPI_Comm_size(MPI_COMM_WORLD)")

        // Convoy's traffic runs on a duplicate so it never matches messages of other code using MPI_COMM_WORLD.
        // A blocking collective, but at start-up, before any communication thread exists.
        var duplicate: MPI_Comm? = convoy_mpi_comm_null()
        try checkLocked(MPI_Comm_dup(convoy_mpi_comm_world(), &duplicate), "MPI_Comm_dup(MPI_COMM_WORLD)")
        guard let duplicate else { throw CommunicationError.backend("MPI_Comm_dup(MPI_COMM_WORLD) returned no communicator") }
        try checkLocked(MPI_Comm_set_errhandler(duplicate, convoy_mpi_errors_return()), "MPI_Comm_set_errhandler(world duplicate)")

        let threadLevel = ThreadLevel(mpiValue: provided)
        let world = MPIProcessGroup(
            communicator: duplicate, name: "world", rank: Int(rank), size: Int(size),
            worldRanks: Array(0..<Int(size)), freesCommunicator: false)
        let runtime = MPIRuntime(
            threadLevel: threadLevel, worldRank: Int(rank), worldSize: Int(size),
            tagUpperBound: Int(convoy_mpi_tag_upper_bound()), ownsInitialization: alreadyInitialized == 0, world: world)
        current = runtime
        if alreadyInitialized == 0 {
            atexit { MPIRuntime.finalizeProcess() }
        }
        return runtime
    }

    /// The MCA parameter choosing Open MPI's non-blocking all-reduce algorithm (libnbc).
    public static let allReduceAlgorithmVariable = "OMPI_MCA_coll_libnbc_iallreduce_algorithm"

    /// Makes Open MPI's non-blocking all-reduce use reduce-scatter + all-gather (Rabenseifner, libnbc's
    /// algorithm 3) unless the user chose one (the variable, or `mpirun --mca coll_libnbc_iallreduce_algorithm`).
    ///
    /// By default libnbc takes a binomial tree whenever there are fewer than 4 ranks or the buffer is in place
    /// (always, for Convoy): it moves the whole buffer log₂(n) times up and down the tree, and measured 2× slower
    /// than the blocking `MPI_Allreduce` for 16 MiB on 2 ranks, where Rabenseifner matches it. For buffers of
    /// fewer elements than ranks libnbc falls back to its ring. MCA parameters are read from the environment
    /// by `MPI_Init_thread`, so this must run before it.
    private static func preferFastNonBlockingAllReduce() {
        setenv(allReduceAlgorithmVariable, "3", 0)
    }

    /// The group of all processes (over a duplicate of `MPI_COMM_WORLD`); the same object on every call.
    public func worldGroup() -> MPIProcessGroup { world }

    /// Calls `MPI_Finalize` (once; later calls do nothing). Runs at exit anyway; call it earlier to end MPI
    /// explicitly. Operations still in flight fail; MPI cannot be used again in this process.
    public func finalize() { MPIRuntime.finalizeProcess() }

    /// Ends every process of the job now, for a fatal error: `MPI_Abort` on the world, which makes `mpirun`
    /// kill the other ranks (and report which rank aborted). Print the error first.
    ///
    /// A failing rank must not exit through `MPI_Finalize` (the atexit handler): that waits for every other
    /// rank to finalize too, and they are waiting for the failed rank in a collective, so the job would sit
    /// until their timeouts, or forever. Without MPI (or after finalisation) this simply exits.
    public static func abortJob(exitCode: Int32) -> Never {
        // A communication thread holds the lock only around calls that do not block; if it is somehow held
        // for longer, abort anyway rather than hang on the way out.
        let locked = lock.lock(before: Date(timeIntervalSinceNow: 2))
        if current != nil, !finalized, current!.worldSize > 1 {
            _ = MPI_Abort(convoy_mpi_comm_world(), exitCode)
        }
        if locked { lock.unlock() }
        _exit(exitCode)
    }

    private static func finalizeProcess() {
        lock.lock()
        defer { lock.unlock() }
        guard let current, !finalized else { return }
        finalized = true
        // Waits for the other processes' MPI_Finalize: the end of the program, so holding the lock is harmless.
        if current.ownsInitialization { _ = MPI_Finalize() }
    }

    // MARK: Guarded calls (internal to the backend)

    /// Runs `body` (MPI calls that do not block) under the process-wide lock; throws if MPI is not usable.
    static func withLock<Result>(_ body: () throws -> Result) throws -> Result {
        lock.lock()
        defer { lock.unlock() }
        guard current != nil, !finalized else {
            throw CommunicationError.backend(finalized
                ? "MPI has been finalized; no communication is possible after MPIRuntime.finalize() or exit"
                : "MPI is not initialized; call MPIRuntime.initialize() first")
        }
        return try body()
    }

    /// Runs `body`, an MPI call that may block until the other ranks arrive (`MPI_Comm_split`).
    ///
    /// Under `MPI_THREAD_MULTIPLE` it runs without the lock, so that other groups' threads keep polling and a
    /// peer process blocked in the same call on another group cannot deadlock with us; with a lower level
    /// MPI requires serialised calls, so it runs under the lock. Callers first make sure all ranks have
    /// arrived (with a non-blocking, timed rendezvous), so the call returns promptly either way.
    static func blockingCall<Result>(_ body: () throws -> Result) throws -> Result {
        lock.lock()
        guard let runtime = current, !finalized else {
            lock.unlock()
            throw CommunicationError.backend("MPI has been finalized or was never initialized")
        }
        if runtime.threadLevel == .multiple {
            lock.unlock()
            return try body()
        }
        defer { lock.unlock() }
        return try body()
    }

    /// Throws ``CommunicationError/backend(_:)`` for a failed MPI return code. Call it under the lock.
    static func checkLocked(_ code: Int32, _ operation: @autoclosure () -> String) throws {
        guard code != convoy_mpi_success() else { return }
        throw backendErrorLocked(code: code, operation: operation())
    }

    /// The Swift error for an MPI return code, with the library's message (`MPI_Error_string`). Call it
    /// under the lock (it calls into MPI).
    static func backendErrorLocked(code: Int32, operation: String) -> CommunicationError {
        CommunicationError.backend("\(operation) failed: \(errorStringLocked(code: code)) (MPI error code \(code))")
    }

    /// `MPI_Error_string` for `code`. Call it under the lock.
    static func errorStringLocked(code: Int32) -> String {
        var buffer = [CChar](repeating: 0, count: Int(convoy_mpi_max_error_string()) + 1)
        var length: Int32 = 0
        guard MPI_Error_string(code, &buffer, &length) == convoy_mpi_success() else { return "unknown MPI error" }
        return String(decoding: buffer.prefix(Int(length)).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// The Swift error for an MPI return code, with the library's message (takes the lock).
    public static func backendError(code: Int32, operation: String) -> CommunicationError {
        (try? withLock { backendErrorLocked(code: code, operation: operation) })
            ?? CommunicationError.backend("\(operation) failed with MPI error code \(code)")
    }
}
