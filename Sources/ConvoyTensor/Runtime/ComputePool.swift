import Foundation
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Convoy's own small thread pool for data-parallel loops inside one rank.
///
/// OpenBLAS's thread count is process-wide, and ranks of the Local backend are threads of one process, so
/// Convoy keeps BLAS single-threaded and splits work itself: each caller decides how many cores it uses by
/// choosing (or creating) the pool it runs on. A pool with `threadCount` n runs loops on the calling thread
/// plus n − 1 workers. Loops are statically partitioned into n contiguous ranges, which keeps GEMM row
/// blocks and row-wise kernels cache friendly and deterministic.
public final class ComputePool: @unchecked Sendable {
    /// Number of threads a loop runs on, the caller included.
    public let threadCount: Int

    /// The state workers share with the pool. Workers hold it strongly and the pool only through it, so
    /// dropping the last reference to the pool stops its workers instead of leaking them.
    private final class Shared: @unchecked Sendable {
        typealias Job = (Int) -> Void
        let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
        let workAvailable = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
        let workFinished = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)
        var generation = 0
        var pendingWorkers = 0
        var currentJob: UnsafeMutableRawPointer?
        var shuttingDown = false

        init() {
            pthread_mutex_init(mutex, nil)
            pthread_cond_init(workAvailable, nil)
            pthread_cond_init(workFinished, nil)
        }

        deinit {
            pthread_cond_destroy(workAvailable)
            pthread_cond_destroy(workFinished)
            pthread_mutex_destroy(mutex)
            mutex.deallocate()
            workAvailable.deallocate()
            workFinished.deallocate()
        }

        func workerLoop(index: Int) {
            var seenGeneration = 0
            ComputePool.insideLoop.value = true
            while true {
                pthread_mutex_lock(mutex)
                while generation == seenGeneration && !shuttingDown {
                    pthread_cond_wait(workAvailable, mutex)
                }
                if shuttingDown { pthread_mutex_unlock(mutex); return }
                seenGeneration = generation
                let job = currentJob!
                pthread_mutex_unlock(mutex)

                job.assumingMemoryBound(to: Job.self).pointee(index)

                pthread_mutex_lock(mutex)
                pendingWorkers -= 1
                if pendingWorkers == 0 { pthread_cond_signal(workFinished) }
                pthread_mutex_unlock(mutex)
            }
        }
    }

    private let shared = Shared()
    /// Serialises loops submitted from different threads that share this pool.
    private let submission = Mutex(())

    fileprivate static let insideLoop = ThreadLocal<Bool> { false }

    /// Creates a pool that runs loops on `threadCount` threads (at least 1).
    public init(threadCount: Int) {
        self.threadCount = max(1, threadCount)
        for workerIndex in 1..<self.threadCount {
            let state = shared
            let thread = Thread { state.workerLoop(index: workerIndex) }
            thread.name = "convoy-compute-\(workerIndex)"
            thread.stackSize = 8 << 20
            thread.start()
        }
    }

    deinit {
        // No loop can be running (it would hold a reference); workers wake, see the flag and exit.
        pthread_mutex_lock(shared.mutex)
        shared.shuttingDown = true
        pthread_cond_broadcast(shared.workAvailable)
        pthread_mutex_unlock(shared.mutex)
    }

    /// Runs `body(part)` for `part` in 0 ..< threadCount, one part per thread, and returns when all are done.
    /// Called from inside another loop of any pool, the parts run one after another on the calling thread.
    public func runParts(_ body: (Int) -> Void) {
        if threadCount == 1 || Self.insideLoop.value {
            for part in 0..<threadCount { body(part) }
            return
        }
        let shared = self.shared
        submission.withLock { _ in
            withoutActuallyEscaping(body) { escapingBody in
                var job: Shared.Job = escapingBody
                withUnsafeMutablePointer(to: &job) { jobPointer in
                    pthread_mutex_lock(shared.mutex)
                    shared.currentJob = UnsafeMutableRawPointer(jobPointer)
                    shared.pendingWorkers = threadCount - 1
                    shared.generation += 1
                    pthread_cond_broadcast(shared.workAvailable)
                    pthread_mutex_unlock(shared.mutex)

                    Self.insideLoop.withValue(true) { escapingBody(0) }

                    pthread_mutex_lock(shared.mutex)
                    while shared.pendingWorkers > 0 { pthread_cond_wait(shared.workFinished, shared.mutex) }
                    shared.currentJob = nil
                    pthread_mutex_unlock(shared.mutex)
                }
            }
        }
    }

    /// Splits `0 ..< count` into at most `threadCount` contiguous ranges of at least `minimumChunk` items
    /// and runs `body` on each in parallel.
    public func parallelFor(_ count: Int, minimumChunk: Int = 1, _ body: (Range<Int>) -> Void) {
        guard count > 0 else { return }
        let parts = min(threadCount, max(1, count / max(1, minimumChunk)))
        if parts == 1 || Self.insideLoop.value { body(0..<count); return }
        runParts { part in
            guard part < parts else { return }
            let start = count * part / parts
            let end = count * (part + 1) / parts
            if start < end { body(start..<end) }
        }
    }

    // MARK: - Which pool a thread uses

    private static let sharedPool = Mutex<ComputePool?>(nil)
    private static let threadPool = ThreadLocal<ComputePool?> { nil }

    /// The default thread count: `CONVOY_THREADS` if set, else the number of active cores.
    public static var defaultThreadCount: Int {
        if let text = ProcessInfo.processInfo.environment["CONVOY_THREADS"], let value = Int(text), value > 0 { return value }
        return ProcessInfo.processInfo.activeProcessorCount
    }

    /// The pool shared by threads that have not chosen their own.
    public static var shared: ComputePool {
        sharedPool.withLock { pool in
            if let pool { return pool }
            let created = ComputePool(threadCount: defaultThreadCount)
            pool = created
            return created
        }
    }

    /// Replaces the shared pool by one with `threadCount` threads (the `--threads` flag).
    public static func setSharedThreadCount(_ threadCount: Int) {
        sharedPool.withLock { pool in
            if pool?.threadCount != threadCount { pool = ComputePool(threadCount: threadCount) }
        }
    }

    /// The pool kernels called on this thread use.
    public static var current: ComputePool { threadPool.value ?? shared }

    /// Runs `body` with kernels on this thread using `pool` (a rank gives itself its share of the cores).
    public static func withPool<Result>(_ pool: ComputePool, _ body: () throws -> Result) rethrows -> Result {
        try threadPool.withValue(pool, body)
    }
}
