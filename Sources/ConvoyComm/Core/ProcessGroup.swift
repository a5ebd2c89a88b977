import ConvoyTensor

/// A set of ranks that communicate: collectives, point-to-point messages and barriers.
///
/// Every operation has an asynchronous form that returns a ``Work`` at once and runs on the group's
/// communication thread, so computation overlaps it; operations on one group complete in the order issued,
/// and several groups may have work in flight at the same time. The synchronous forms (in the extension) wait
/// on that handle with the default timeout.
///
/// Buffers are contiguous Float32 or BFloat16 memory (``CommunicationBuffer``) and must stay valid until the
/// work completes. Reduce-scatter and all-gather cut buffers with ``ChunkLayout``, so any count works.
public protocol ProcessGroup: AnyObject, Sendable {
    /// This process's (or thread's) index in the group.
    var rank: Int { get }
    /// Number of ranks.
    var size: Int { get }
    /// A name for messages ("world", "dp", "pp.1").
    var name: String { get }
    /// The ranks of the group as ranks of the world, indexed by group rank.
    var worldRanks: [Int] { get }

    /// In place: every rank's buffer becomes the reduction of all ranks' buffers.
    func allReduceAsync(_ buffer: CommunicationBuffer, operation: ReduceOperation) -> Work
    /// Rank r's `output` (chunk r of ``ChunkLayout``) becomes the reduction of chunk r of every rank's `input`.
    func reduceScatterAsync(input: CommunicationBuffer, output: CommunicationBuffer, operation: ReduceOperation) -> Work
    /// Every rank's `output` becomes the concatenation of all ranks' `input` (chunk r from rank r).
    func allGatherAsync(input: CommunicationBuffer, output: CommunicationBuffer) -> Work
    /// Every rank's buffer becomes `root`'s.
    func broadcastAsync(_ buffer: CommunicationBuffer, root: Int) -> Work
    /// Sends `buffer` to `destination`; matched by a receive with the same source and tag (FIFO per pair).
    func sendAsync(_ buffer: CommunicationBuffer, to destination: Int, tag: Int) -> Work
    /// Receives into `buffer` from `source` with `tag`.
    func receiveAsync(_ buffer: CommunicationBuffer, from source: Int, tag: Int) -> Work
    /// Completes when every rank has reached it.
    func barrierAsync() -> Work
    /// Waits until a message with `tag` from any other rank is available, without receiving it; the work's
    /// ``Work/probed`` then names the sender and the message's element count (of `dtype`), so the caller can size
    /// a buffer and receive it from that sender. Messages from one sender are found in the order they were sent;
    /// between senders, the earliest to arrive first. Times out like a receive, naming the group and the tag.
    func probeAsync(tag: Int, dtype: DType) -> Work

    /// Collective over this group: ranks with the same `color` form a new group, ordered by (`key`, rank),
    /// called `name` (default: derived from this group's name and the colour). A negative colour takes no
    /// part and gets nil.
    func split(color: Int, key: Int, name: String?) throws -> (any ProcessGroup)?
}

extension ProcessGroup {
    /// Collective over this group: the ranks in `ranks` (group ranks, in that order) form a new group;
    /// other ranks get nil.
    public func subgroup(ranks: [Int], name: String? = nil) throws -> (any ProcessGroup)? {
        guard Set(ranks).count == ranks.count, ranks.allSatisfy({ $0 >= 0 && $0 < size }) else {
            throw CommunicationError.invalidArgument("subgroup ranks \(ranks) must be distinct ranks of group '\(self.name)' (size \(size))")
        }
        let position = ranks.firstIndex(of: rank)
        return try split(color: position == nil ? -1 : 0, key: position ?? 0, name: name)
    }

    /// ``split(color:key:name:)`` with the default name.
    public func split(color: Int, key: Int) throws -> (any ProcessGroup)? {
        try split(color: color, key: key, name: nil)
    }

    public func allReduce(_ buffer: CommunicationBuffer, operation: ReduceOperation = .sum) throws {
        try allReduceAsync(buffer, operation: operation).wait()
    }
    public func reduceScatter(input: CommunicationBuffer, output: CommunicationBuffer, operation: ReduceOperation = .sum) throws {
        try reduceScatterAsync(input: input, output: output, operation: operation).wait()
    }
    public func allGather(input: CommunicationBuffer, output: CommunicationBuffer) throws {
        try allGatherAsync(input: input, output: output).wait()
    }
    public func broadcast(_ buffer: CommunicationBuffer, root: Int) throws {
        try broadcastAsync(buffer, root: root).wait()
    }
    public func send(_ buffer: CommunicationBuffer, to destination: Int, tag: Int = 0) throws {
        try sendAsync(buffer, to: destination, tag: tag).wait()
    }
    public func receive(_ buffer: CommunicationBuffer, from source: Int, tag: Int = 0) throws {
        try receiveAsync(buffer, from: source, tag: tag).wait()
    }
    public func barrier() throws { try barrierAsync().wait() }
    /// Waits for a message with `tag` from any rank (``probeAsync(tag:dtype:)``) and says who sent it and how long it is.
    public func probe(tag: Int, dtype: DType = .float32) throws -> ProbedMessage {
        let work = probeAsync(tag: tag, dtype: dtype)
        try work.wait()
        guard let found = work.probed else { throw CommunicationError.backend("\(work.summary) completed without a message") }
        return found
    }

    /// Tensor conveniences (the tensor must be contiguous and outlive the call).
    public func allReduce(_ tensor: Tensor, operation: ReduceOperation = .sum) throws {
        try withExtendedLifetime(tensor) { try allReduce(CommunicationBuffer(tensor), operation: operation) }
    }
    public func broadcast(_ tensor: Tensor, root: Int) throws {
        try withExtendedLifetime(tensor) { try broadcast(CommunicationBuffer(tensor), root: root) }
    }
}

/// What a rank asks a collective to do; ranks must agree on it (the debug mode checks).
public struct CollectiveDescriptor: Sendable, Equatable, CustomStringConvertible {
    public enum Kind: String, Sendable { case allReduce = "all-reduce", reduceScatter = "reduce-scatter", allGather = "all-gather", broadcast, barrier, split }
    public var kind: Kind
    public var dtype: DType?
    /// Element count of the (input) buffer.
    public var count: Int
    public var operation: ReduceOperation?
    public var root: Int?

    public init(kind: Kind, dtype: DType? = nil, count: Int = 0, operation: ReduceOperation? = nil, root: Int? = nil) {
        self.kind = kind
        self.dtype = dtype
        self.count = count
        self.operation = operation
        self.root = root
    }

    public var description: String {
        var parts = [kind.rawValue]
        if let dtype { parts.append("\(dtype)") }
        if kind != .barrier && kind != .split { parts.append("count \(count)") }
        if let operation { parts.append(operation.rawValue) }
        if let root { parts.append("root \(root)") }
        return parts.joined(separator: " ")
    }
}
