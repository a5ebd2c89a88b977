import ConvoyTensor
import Synchronization

/// A process group that forwards every operation to another and counts the collectives issued through it —
/// kind and element count — so tests and benchmarks can check communication against a formula.
public final class CountingProcessGroup: ProcessGroup {
    /// One collective issued through the group.
    public struct Record: Sendable, Equatable {
        public var kind: CollectiveDescriptor.Kind
        /// Elements of the input buffer (of the output for all-gather: the gathered whole).
        public var count: Int
        public var bytes: Int
    }

    public let inner: any ProcessGroup
    private let log = Mutex<[Record]>([])

    public init(_ inner: any ProcessGroup) { self.inner = inner }

    /// The collectives issued so far, in order.
    public var records: [Record] { log.withLock { $0 } }
    /// Forgets the records so far.
    public func reset() { log.withLock { $0.removeAll() } }

    private func note(_ kind: CollectiveDescriptor.Kind, _ buffer: CommunicationBuffer) {
        log.withLock { $0.append(Record(kind: kind, count: buffer.count, bytes: buffer.byteCount)) }
    }

    public var rank: Int { inner.rank }
    public var size: Int { inner.size }
    public var name: String { inner.name }
    public var worldRanks: [Int] { inner.worldRanks }

    public func allReduceAsync(_ buffer: CommunicationBuffer, operation: ReduceOperation) -> Work {
        note(.allReduce, buffer)
        return inner.allReduceAsync(buffer, operation: operation)
    }
    public func reduceScatterAsync(input: CommunicationBuffer, output: CommunicationBuffer, operation: ReduceOperation) -> Work {
        note(.reduceScatter, input)
        return inner.reduceScatterAsync(input: input, output: output, operation: operation)
    }
    public func allGatherAsync(input: CommunicationBuffer, output: CommunicationBuffer) -> Work {
        note(.allGather, output)
        return inner.allGatherAsync(input: input, output: output)
    }
    public func broadcastAsync(_ buffer: CommunicationBuffer, root: Int) -> Work {
        note(.broadcast, buffer)
        return inner.broadcastAsync(buffer, root: root)
    }
    public func sendAsync(_ buffer: CommunicationBuffer, to destination: Int, tag: Int) -> Work { inner.sendAsync(buffer, to: destination, tag: tag) }
    public func receiveAsync(_ buffer: CommunicationBuffer, from source: Int, tag: Int) -> Work { inner.receiveAsync(buffer, from: source, tag: tag) }
    public func barrierAsync() -> Work { inner.barrierAsync() }
    public func probeAsync(tag: Int, dtype: DType) -> Work { inner.probeAsync(tag: tag, dtype: dtype) }
    public func split(color: Int, key: Int, name: String?) throws -> (any ProcessGroup)? { try inner.split(color: color, key: key, name: name) }
}
