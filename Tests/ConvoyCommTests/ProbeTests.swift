import ConvoyComm
import ConvoyTensor
import Foundation
import Testing

/// Receives from any source: a probe names the sender and length of the earliest message with its tag, which
/// then stays queued until received from that sender.
@Suite(.serialized) struct ProbeTests {
    init() { CommunicationTimeout.set(20) }

    @Test func probeFindsTheEarliestSenderAndTheLength() throws {
        let received = try LocalWorld.run(size: 3) { group -> [ProbedMessage] in
            let tag = 11
            switch group.rank {
            case 1:
                try group.send(Tensor(shape: [2], values: [1, 1]), to: 0, tag: tag)
                try group.barrier()
                try group.barrier()
            case 2:
                try group.barrier()
                try group.send(Tensor(shape: [5], values: [2, 2, 2, 2, 2]), to: 0, tag: tag)
                // A message with another tag is not found by the probe.
                try group.send(Tensor(shape: [1], values: [9]), to: 0, tag: tag + 1)
                try group.barrier()
            default:
                try group.barrier()
                try group.barrier()
                var found: [ProbedMessage] = []
                for _ in 0..<2 {
                    let message = try group.probe(tag: tag)
                    let buffer = Tensor.zeros([message.count])
                    try group.receive(buffer, from: message.source, tag: tag)
                    #expect(buffer.toArray() == Array(repeating: Float(message.source), count: message.count))
                    found.append(message)
                }
                let other = try group.probe(tag: tag + 1)
                #expect(other == ProbedMessage(source: 2, count: 1))
                try group.receive(Tensor.zeros([1]), from: 2, tag: tag + 1)
                return found
            }
            return []
        }
        #expect(received[0] == [ProbedMessage(source: 1, count: 2), ProbedMessage(source: 2, count: 5)])
    }

    @Test func aProbeWithoutASenderTimesOutNamingTheRanks() throws {
        CommunicationTimeout.set(0.5)
        defer { CommunicationTimeout.set(20) }
        let error = #expect(throws: CommunicationError.self) {
            _ = try LocalWorld.run(size: 3) { group in
                if group.rank == 0 { _ = try group.probe(tag: 4) }
            }
        }
        #expect("\(error!)".contains("none of ranks [1, 2] sent a message with tag 4"))
    }
}

/// A buffer made from a tensor retains the tensor's storage, so a ``Work`` that still has to write into it
/// keeps the memory alive after the caller dropped the tensor.
@Suite(.serialized) struct WorkLifetimeTests {
    init() { CommunicationTimeout.set(20) }

    @Test func aPendingReceiveKeepsItsBufferAlive() throws {
        let alive = try LocalWorld.run(size: 2) { group -> Bool in
            // A second group with its own queue: the world's queue is busy with the pending receive.
            let side = try group.subgroup(ranks: [0, 1], name: "side")!
            guard group.rank == 0 else {
                try side.barrier()
                try group.send(Tensor(shape: [3], values: [1, 2, 3]), to: 0, tag: 8)
                return true
            }
            weak var storage: TensorStorage?
            let work: Work
            do {
                let target = Tensor.zeros([3])
                storage = target.storage
                work = group.receiveAsync(CommunicationBuffer(target), from: 1, tag: 8)
            }
            // Nothing has been sent yet (rank 1 waits in the barrier), so the receive cannot have completed.
            let keptWhilePending = storage != nil && !work.isCompleted
            try side.barrier()
            try work.wait()
            return keptWhilePending
        }
        #expect(alive == [true, true])
    }
}

extension ProcessGroup {
    func send(_ tensor: Tensor, to destination: Int, tag: Int) throws { try send(CommunicationBuffer(tensor), to: destination, tag: tag) }
    func receive(_ tensor: Tensor, from source: Int, tag: Int) throws { try receive(CommunicationBuffer(tensor), from: source, tag: tag) }
}
