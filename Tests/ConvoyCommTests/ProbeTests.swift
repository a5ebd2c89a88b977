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

extension ProcessGroup {
    func send(_ tensor: Tensor, to destination: Int, tag: Int) throws { try send(CommunicationBuffer(tensor), to: destination, tag: tag) }
    func receive(_ tensor: Tensor, from source: Int, tag: Int) throws { try receive(CommunicationBuffer(tensor), from: source, tag: tag) }
}
