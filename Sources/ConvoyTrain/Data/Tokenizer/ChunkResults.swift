import Synchronization

/// The ids of each chunk of a parallel encode, filled in by the threads that encode them.
final class ChunkResults: Sendable {
    private let chunks: Mutex<[[Int32]]>

    init(count: Int) { chunks = Mutex([[Int32]](repeating: [], count: count)) }

    func store(_ ids: [Int32], at index: Int) { chunks.withLock { $0[index] = ids } }

    /// All chunks' ids, in order.
    func joined() -> [Int32] { chunks.withLock { Array($0.joined()) } }
}
