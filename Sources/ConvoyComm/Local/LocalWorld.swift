import ConvoyTensor
import Foundation

/// Starts the ranks of the Local backend: one thread per rank in this process, each with its world group
/// and its own share of the cores for computation.
public enum LocalWorld {
    /// Runs `body` on `size` threads, one per rank, each given its rank's world group, and returns the
    /// results by rank. Each rank computes on its own ``ComputePool`` of `threadsPerRank` threads (default:
    /// the cores divided among the ranks, at least one). When a rank's body throws, every group of the world
    /// fails at once (peers waiting on that rank get a "peer failed" error instead of a timeout). Rethrows the
    /// error of the lowest rank that failed by itself.
    public static func run<Result>(
        size: Int, name: String = "world", threadsPerRank: Int? = nil,
        _ body: @escaping @Sendable (any ProcessGroup) throws -> Result
    ) throws -> [Result] {
        guard size > 0 else { throw CommunicationError.invalidArgument("a Local world needs at least one rank, got \(size)") }
        let groups = LocalWorldGroups()
        let state = LocalGroupState(name: name, size: size, worldRanks: Array(0..<size), world: groups)
        let threads = threadsPerRank ?? Swift.max(1, ComputePool.defaultThreadCount / size)
        let outcomes = OutcomeSlots<Result>(count: size)
        let finished = DispatchGroup()
        for rank in 0..<size {
            finished.enter()
            let thread = Thread {
                defer { finished.leave() }
                let group = LocalProcessGroup(state: state, rank: rank)
                let pool = ComputePool(threadCount: threads)
                // Memory this rank allocates is counted as its own (per-rank memory benchmarks).
                let outcome = Swift.Result { try TensorAllocator.withOwner(rank) { try ComputePool.withPool(pool) { try body(group) } } }
                if case .failure(let error) = outcome {
                    // The other ranks would otherwise wait for this one until their timeouts.
                    groups.abortAll("rank \(rank) stopped with an error: \(error)")
                }
                outcomes.set(rank, outcome)
            }
            thread.name = "convoy-rank-\(rank)"
            thread.stackSize = 16 << 20
            thread.start()
        }
        finished.wait()
        return try outcomes.values()
    }
}

/// Per-rank results written by the rank threads.
private final class OutcomeSlots<Value>: @unchecked Sendable {
    private let lock = NSLock()
    private var slots: [Swift.Result<Value, Error>?]

    init(count: Int) { slots = Array(repeating: nil, count: count) }

    func set(_ index: Int, _ outcome: Swift.Result<Value, Error>) {
        lock.lock()
        slots[index] = outcome
        lock.unlock()
    }

    /// The results by rank, or the error of the lowest rank that failed by itself (ranks that failed only
    /// because a peer did come second).
    func values() throws -> [Value] {
        lock.lock()
        defer { lock.unlock() }
        let failures: [Error] = slots.compactMap { if case .failure(let error)? = $0 { return error } else { return nil } }
        if let rootCause = failures.first(where: { !Self.isPeerFailure($0) }) ?? failures.first { throw rootCause }
        return try slots.map { try $0!.get() }
    }

    private static func isPeerFailure(_ error: Error) -> Bool {
        if case CommunicationError.peerFailed = error { return true }
        return false
    }
}
