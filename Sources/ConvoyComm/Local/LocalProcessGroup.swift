import ConvoyTensor
import Foundation
import Synchronization

/// One rank's view of a group of the Local backend: ranks are threads of one process and exchange data
/// through shared memory.
///
/// Collectives meet in a rendezvous (every rank posts its buffers), then each rank moves only its share of
/// the data directly between the ranks' buffers, then all wait until everyone is done. An all-reduce is a
/// fused reduce-scatter + all-gather: rank r reduces chunk r of every buffer with SIMD and writes the result
/// straight into chunk r of every buffer, so each buffer is read once and written once — the minimum memory
/// traffic, with no intermediate copies. Point-to-point sends are eager (copied into the receiver's mailbox),
/// so a send never blocks and pipelines cannot deadlock on it.
///
/// Arguments are always checked across ranks (the same kind, dtype, count, operation and root, in the same
/// order): in shared memory a mismatch would otherwise corrupt memory, and the check costs nothing here.
public final class LocalProcessGroup: ProcessGroup, @unchecked Sendable {
    public let rank: Int
    public var size: Int { state.size }
    public var name: String { state.name }
    public var worldRanks: [Int] { state.worldRanks }

    let state: LocalGroupState
    private let queue: CommunicationQueue
    private let counters = Mutex<(collectives: Int, receives: Int)>((0, 0))
    /// Reduction scratch, used only on the communication thread.
    private let scratch = UnsafeMutablePointer<Float>.allocate(capacity: 2 * BufferReduction.blockElements)

    init(state: LocalGroupState, rank: Int) {
        self.state = state
        self.rank = rank
        queue = CommunicationQueue(name: "convoy-comm \(state.name) rank \(rank)")
    }

    deinit { scratch.deallocate() }

    private func nextSequence() -> Int {
        counters.withLock { counters in
            defer { counters.collectives += 1 }
            return counters.collectives
        }
    }

    private func failed(_ summary: String, _ message: String) -> Work {
        Work.completed(summary, error: CommunicationError.invalidArgument("\(summary) on group '\(name)' (rank \(rank)): \(message)"))
    }

    /// Runs a collective: rendezvous, this rank's share of the data movement, departure.
    private func collective(
        _ descriptor: CollectiveDescriptor, input: CommunicationBuffer?, output: CommunicationBuffer?,
        move: @escaping (LocalGroupState.LocalRendezvous) throws -> Void
    ) -> Work {
        let sequence = nextSequence()
        let state = self.state, rank = self.rank
        return queue.enqueue("\(descriptor) #\(sequence) on group '\(name)' (rank \(rank))") {
            let timeout = CommunicationTimeout.seconds
            let meeting = try state.arrive(rank: rank, sequence: sequence, descriptor: descriptor, input: input?.pointer, output: output?.pointer, timeout: timeout)
            try move(meeting)
            try state.depart(rank: rank, sequence: sequence, meeting: meeting, descriptor: descriptor, timeout: timeout)
        }
    }

    public func allReduceAsync(_ buffer: CommunicationBuffer, operation: ReduceOperation) -> Work {
        let descriptor = CollectiveDescriptor(kind: .allReduce, dtype: buffer.dtype, count: buffer.count, operation: operation)
        let size = self.size, rank = self.rank, scratch = self.scratch
        return collective(descriptor, input: buffer, output: buffer) { meeting in
            let chunk = ChunkLayout.range(total: buffer.count, parts: size, rank: rank)
            guard !chunk.isEmpty else { return }
            let buffers = meeting.inputs.map { $0! }
            BufferReduction.reduce(sources: buffers, destinations: buffers, destinationOffset: chunk.lowerBound, range: chunk,
                                   dtype: buffer.dtype, operation: operation, groupSize: size, scratch: scratch)
        }
    }

    public func reduceScatterAsync(input: CommunicationBuffer, output: CommunicationBuffer, operation: ReduceOperation) -> Work {
        let chunk = ChunkLayout.range(total: input.count, parts: size, rank: rank)
        guard output.count == chunk.count, output.dtype == input.dtype else {
            return failed("reduce-scatter", "output holds \(output.count) \(output.dtype) elements; rank \(rank)'s chunk of \(input.count) is \(chunk.count) \(input.dtype) elements (ChunkLayout)")
        }
        let descriptor = CollectiveDescriptor(kind: .reduceScatter, dtype: input.dtype, count: input.count, operation: operation)
        let size = self.size, scratch = self.scratch
        return collective(descriptor, input: input, output: output) { meeting in
            guard !chunk.isEmpty else { return }
            BufferReduction.reduce(sources: meeting.inputs.map { $0! }, destinations: [output.pointer!], range: chunk,
                                   dtype: input.dtype, operation: operation, groupSize: size, scratch: scratch)
        }
    }

    public func allGatherAsync(input: CommunicationBuffer, output: CommunicationBuffer) -> Work {
        let chunk = ChunkLayout.range(total: output.count, parts: size, rank: rank)
        guard input.count == chunk.count, output.dtype == input.dtype else {
            return failed("all-gather", "input holds \(input.count) \(input.dtype) elements; rank \(rank)'s chunk of the \(output.count)-element output is \(chunk.count) \(output.dtype) elements (ChunkLayout)")
        }
        let descriptor = CollectiveDescriptor(kind: .allGather, dtype: output.dtype, count: output.count)
        let size = self.size
        return collective(descriptor, input: input, output: output) { meeting in
            // Pull every rank's chunk into this rank's output.
            let elementSize = output.dtype.byteSize
            for source in 0..<size {
                let range = ChunkLayout.range(total: output.count, parts: size, rank: source)
                guard !range.isEmpty else { continue }
                (output.pointer! + range.lowerBound * elementSize).copyMemory(from: meeting.inputs[source]!, byteCount: range.count * elementSize)
            }
        }
    }

    public func broadcastAsync(_ buffer: CommunicationBuffer, root: Int) -> Work {
        guard root >= 0 && root < size else { return failed("broadcast", "root \(root) is not a rank of a group of \(size)") }
        let descriptor = CollectiveDescriptor(kind: .broadcast, dtype: buffer.dtype, count: buffer.count, root: root)
        let rank = self.rank
        return collective(descriptor, input: buffer, output: buffer) { meeting in
            guard rank != root, buffer.count > 0 else { return }
            buffer.pointer!.copyMemory(from: meeting.inputs[root]!, byteCount: buffer.byteCount)
        }
    }

    public func barrierAsync() -> Work {
        collective(CollectiveDescriptor(kind: .barrier), input: nil, output: nil) { _ in }
    }

    public func sendAsync(_ buffer: CommunicationBuffer, to destination: Int, tag: Int) -> Work {
        guard destination >= 0 && destination < size, destination != rank else {
            return failed("send", "destination \(destination) must be another rank of a group of \(size)")
        }
        let state = self.state, rank = self.rank
        return queue.enqueue("send to rank \(destination) tag \(tag) on group '\(name)' (rank \(rank))") {
            let bytes = buffer.count == 0 ? [] : [UInt8](UnsafeRawBufferPointer(start: buffer.pointer, count: buffer.byteCount))
            try state.post(bytes, from: rank, to: destination, tag: tag)
        }
    }

    public func receiveAsync(_ buffer: CommunicationBuffer, from source: Int, tag: Int) -> Work {
        guard source >= 0 && source < size, source != rank else {
            return failed("receive", "source \(source) must be another rank of a group of \(size)")
        }
        let state = self.state, rank = self.rank
        let sequence = counters.withLock { counters in
            defer { counters.receives += 1 }
            return counters.receives
        }
        return queue.enqueue("receive from rank \(source) tag \(tag) on group '\(name)' (rank \(rank))") {
            let bytes = try state.take(from: source, to: rank, tag: tag, sequence: sequence, timeout: CommunicationTimeout.seconds)
            guard bytes.count == buffer.byteCount else {
                throw CommunicationError.mismatch("receive #\(sequence) from rank \(source) tag \(tag) on group '\(state.name)': the message has \(bytes.count) bytes, the receive buffer \(buffer.byteCount) (\(buffer.count) \(buffer.dtype))")
            }
            if !bytes.isEmpty { bytes.withUnsafeBytes { buffer.pointer!.copyMemory(from: $0.baseAddress!, byteCount: bytes.count) } }
        }
    }

    public func probeAsync(tag: Int, dtype: DType) -> Work {
        let state = self.state, rank = self.rank
        let sequence = counters.withLock { counters in
            defer { counters.receives += 1 }
            return counters.receives
        }
        let work = Work(summary: "probe #\(sequence) for tag \(tag) on group '\(name)' (rank \(rank))")
        queue.submit {
            do {
                let found = try state.peek(to: rank, tag: tag, sequence: sequence, timeout: CommunicationTimeout.seconds)
                guard found.byteCount % dtype.byteSize == 0 else {
                    throw CommunicationError.mismatch("\(work.summary): the message from rank \(found.source) has \(found.byteCount) bytes, not a whole number of \(dtype) elements")
                }
                work.finish(probed: ProbedMessage(source: found.source, count: found.byteCount / dtype.byteSize))
            } catch {
                work.finish(error: error)
            }
        }
        return work
    }

    public func split(color: Int, key: Int, name: String?) throws -> (any ProcessGroup)? {
        let sequence = nextSequence()
        let state = self.state, rank = self.rank
        var result: (state: LocalGroupState, rank: Int)?
        let descriptor = CollectiveDescriptor(kind: .split)
        try queue.enqueue("split #\(sequence) on group '\(self.name)' (rank \(rank))") {
            let timeout = CommunicationTimeout.seconds
            let meeting = try state.arrive(rank: rank, sequence: sequence, descriptor: descriptor, input: nil, output: nil,
                                           split: (color, key, name), timeout: timeout)
            result = meeting.splitResults[rank]
            try state.depart(rank: rank, sequence: sequence, meeting: meeting, descriptor: descriptor, timeout: timeout)
        }.wait()
        return result.map { LocalProcessGroup(state: $0.state, rank: $0.rank) }
    }
}
