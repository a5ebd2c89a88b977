import ConvoyComm
import ConvoyNN
import ConvoyParallel
import ConvoyTensor
import Synchronization
import Testing

/// A process group whose all-gathers fail, without communicating, once the test arms it (on every rank
/// alike, so no rank waits for another).
private final class FailingAllGatherGroup: ProcessGroup {
    let inner: any ProcessGroup
    let armed = Atomic<Bool>(false)

    init(_ inner: any ProcessGroup) { self.inner = inner }

    var rank: Int { inner.rank }
    var size: Int { inner.size }
    var name: String { inner.name }
    var worldRanks: [Int] { inner.worldRanks }

    func allGatherAsync(input: CommunicationBuffer, output: CommunicationBuffer) -> Work {
        guard armed.load(ordering: .relaxed) else { return inner.allGatherAsync(input: input, output: output) }
        return .completed("all-gather on group \(name)", error: CommunicationError.peerFailed("all-gather on group \(name): injected failure"))
    }
    func allReduceAsync(_ buffer: CommunicationBuffer, operation: ReduceOperation) -> Work { inner.allReduceAsync(buffer, operation: operation) }
    func reduceScatterAsync(input: CommunicationBuffer, output: CommunicationBuffer, operation: ReduceOperation) -> Work {
        inner.reduceScatterAsync(input: input, output: output, operation: operation)
    }
    func broadcastAsync(_ buffer: CommunicationBuffer, root: Int) -> Work { inner.broadcastAsync(buffer, root: root) }
    func sendAsync(_ buffer: CommunicationBuffer, to destination: Int, tag: Int) -> Work { inner.sendAsync(buffer, to: destination, tag: tag) }
    func receiveAsync(_ buffer: CommunicationBuffer, from source: Int, tag: Int) -> Work { inner.receiveAsync(buffer, from: source, tag: tag) }
    func barrierAsync() -> Work { inner.barrierAsync() }
    func probeAsync(tag: Int, dtype: DType) -> Work { inner.probeAsync(tag: tag, dtype: dtype) }
    func split(color: Int, key: Int, name: String?) throws -> (any ProcessGroup)? { try inner.split(color: color, key: key, name: name) }
}

@Suite(.serialized) struct ZeROBackwardFailureTests {
    init() { CommunicationTimeout.set(30) }

    /// ZeRO-3 gathers released layers again during backward, from the identity node it puts on the tape: a
    /// gather that fails there is thrown out of `backward()`, naming that node, instead of being kept for later.
    @Test func failedGatherInsideBackwardIsThrownByBackward() throws {
        let messages = try LocalWorld.run(size: 2, threadsPerRank: 1) { world -> String in
            let group = FailingAllGatherGroup(world)
            let model = try GPT(dpConfiguration, seed: 1)
            // No reduce-scatter may be in flight when backward stops: collectives hold raw pointers into buffers
            // the optimizer frees when it goes away, so this test reduces gradients only
            // in finishBackward() here.
            var options = DataParallelOptions()
            options.overlapGradReduce = false
            let zero = try DistributedOptimizer(module: model, group: group, stage: 3, options: options, weightDecay: 0) { SGD($0, learningRate: 0.1) }
            let data = globalBatch(step: 0, batch: 4)
            let loss = model.loss(data.inputs.flatMap { $0 }, targets: data.targets.flatMap { $0 }, batch: 4, time: 8)
            group.armed.store(true, ordering: .relaxed)
            do {
                try loss.backward()
            } catch let error as BackwardError {
                #expect(error.underlying as? CommunicationError == .peerFailed("all-gather on group \(group.name): injected failure"))
                withExtendedLifetime(zero) {}
                return "\(error)"
            }
            return "backward did not fail"
        }
        for message in messages {
            #expect(message.hasPrefix("backward of ZeRO-3 gather of layer unit"), "\(message)")
            #expect(message.contains("before backward: peer failed: all-gather on group world: injected failure"), "\(message)")
        }
    }
}
