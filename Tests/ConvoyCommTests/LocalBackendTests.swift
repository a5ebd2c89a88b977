import ConvoyComm
import ConvoyTensor
import Foundation
import Testing

/// Deterministic per-rank data: small integers, exact in BFloat16 and in sums of up to 8 ranks.
func rankValue(rank: Int, index: Int) -> Float { Float((rank * 3 + index * 5) % 17) - 8 }

func makeTensor(_ values: [Float], dtype: DType) -> Tensor {
    let tensor = Tensor(shape: [values.count], values: values)
    return dtype == .float32 ? tensor : tensor.converted(to: .bfloat16)
}

func reduce(_ values: [Float], _ operation: ReduceOperation) -> Float {
    switch operation {
    case .sum: return values.reduce(0, +)
    case .average: return values.reduce(0, +) / Float(values.count)
    case .max: return values.max()!
    case .min: return values.min()!
    }
}

func close(_ a: [Float], _ b: [Float], dtype: DType) -> Bool {
    guard a.count == b.count else { return false }
    let tolerance: Float = dtype == .float32 ? 1e-5 : 1e-2
    return zip(a, b).allSatisfy { abs($0 - $1) <= tolerance * max(1, abs($1)) }
}

let testCounts = [0, 1, 7, 3, 1 << 20 | 3]

@Suite(.serialized) struct LocalBackendTests {
    init() { CommunicationTimeout.set(20) }

    @Test(arguments: [1, 2, 3, 4, 8])
    func allReduceMatchesReference(ranks: Int) throws {
        for dtype in DType.allCases {
            for count in testCounts + [ranks - 1] where count >= 0 {
                // The large count once (sum); the reductions' arithmetic on the small ones.
                for operation in ReduceOperation.allCases where count < 1000 || operation == .sum {
                    let results = try LocalWorld.run(size: ranks, threadsPerRank: 1) { group in
                        let tensor = makeTensor((0..<count).map { rankValue(rank: group.rank, index: $0) }, dtype: dtype)
                        try group.allReduce(tensor, operation: operation)
                        return tensor.toArray()
                    }
                    let expected = (0..<count).map { i in reduce((0..<ranks).map { rankValue(rank: $0, index: i) }, operation) }
                    for (rank, result) in results.enumerated() {
                        #expect(close(result, expected, dtype: dtype), "all-reduce \(operation) \(dtype) count \(count) rank \(rank) of \(ranks)")
                    }
                }
            }
        }
    }

    @Test(arguments: [1, 2, 3, 5])
    func reduceScatterAndAllGatherMatchReference(ranks: Int) throws {
        for dtype in DType.allCases {
            for count in testCounts + [ranks - 1] where count >= 0 {
                let results = try LocalWorld.run(size: ranks, threadsPerRank: 1) { group -> ([Float], [Float]) in
                    let input = makeTensor((0..<count).map { rankValue(rank: group.rank, index: $0) }, dtype: dtype)
                    let chunk = ChunkLayout.range(total: count, parts: group.size, rank: group.rank)
                    let reduced = makeTensor(Array(repeating: 0, count: chunk.count), dtype: dtype)
                    try group.reduceScatter(input: CommunicationBuffer(input), output: CommunicationBuffer(reduced), operation: .sum)
                    let gathered = makeTensor(Array(repeating: -99, count: count), dtype: dtype)
                    try group.allGather(input: CommunicationBuffer(reduced), output: CommunicationBuffer(gathered))
                    return (reduced.toArray(), gathered.toArray())
                }
                let expected = (0..<count).map { i in (0..<ranks).map { rankValue(rank: $0, index: i) }.reduce(0, +) }
                for (rank, result) in results.enumerated() {
                    let chunk = ChunkLayout.range(total: count, parts: ranks, rank: rank)
                    #expect(close(result.0, Array(expected[chunk]), dtype: dtype), "reduce-scatter \(dtype) count \(count) rank \(rank)")
                    #expect(close(result.1, expected, dtype: dtype), "all-gather \(dtype) count \(count) rank \(rank)")
                }
            }
        }
    }

    @Test func broadcastFromEveryRoot() throws {
        for root in 0..<4 {
            for dtype in DType.allCases {
                let results = try LocalWorld.run(size: 4, threadsPerRank: 1) { group in
                    let tensor = makeTensor((0..<1001).map { rankValue(rank: group.rank, index: $0) }, dtype: dtype)
                    try group.broadcast(tensor, root: root)
                    return tensor.toArray()
                }
                let expected = (0..<1001).map { rankValue(rank: root, index: $0) }
                #expect(results.allSatisfy { close($0, expected, dtype: dtype) })
            }
        }
    }

    @Test func sendAndReceiveAroundARingInOrder() throws {
        let results = try LocalWorld.run(size: 3, threadsPerRank: 1) { group -> [[Float]] in
            let next = (group.rank + 1) % group.size, previous = (group.rank + group.size - 1) % group.size
            // Two tagged messages each way; tag 2 is received first although it was sent second.
            let first = Tensor(shape: [5], values: (0..<5).map { Float(group.rank * 10 + $0) })
            let second = Tensor(shape: [2], values: [Float(group.rank), -1])
            let sends = [group.sendAsync(CommunicationBuffer(first), to: next, tag: 1), group.sendAsync(CommunicationBuffer(second), to: next, tag: 2)]
            let receivedSecond = Tensor.zeros([2]), receivedFirst = Tensor.zeros([5])
            try group.receive(CommunicationBuffer(receivedSecond), from: previous, tag: 2)
            try group.receive(CommunicationBuffer(receivedFirst), from: previous, tag: 1)
            for work in sends { try work.wait() }
            return [receivedFirst.toArray(), receivedSecond.toArray()]
        }
        for (rank, received) in results.enumerated() {
            let previous = (rank + 2) % 3
            #expect(received[0] == (0..<5).map { Float(previous * 10 + $0) })
            #expect(received[1] == [Float(previous), -1])
        }
    }

    @Test func splitAndSubgroupsFormTheRightGroups() throws {
        let results = try LocalWorld.run(size: 6, threadsPerRank: 1) { group -> [Float] in
            // Even and odd ranks, ordered by descending rank.
            let parity = try group.split(color: group.rank % 2, key: -group.rank)!
            let tensor = Tensor(shape: [1], values: [Float(group.rank)])
            try parity.allReduce(tensor)
            let members = try group.subgroup(ranks: [4, 1, 2], name: "trio")
            var trio: [Float] = [-1, -1, -1]
            if let members {
                #expect(members.name == "trio")
                let value = Tensor(shape: [1], values: [Float(group.rank)])
                let all = Tensor.zeros([3])
                try members.allGather(input: CommunicationBuffer(value), output: CommunicationBuffer(all))
                trio = all.toArray()
            }
            return [Float(parity.rank), Float(parity.size), tensor.toArray()[0]] + trio
        }
        for (rank, result) in results.enumerated() {
            let sameParity = stride(from: rank % 2, to: 6, by: 2).sorted(by: >)
            #expect(result[0] == Float(sameParity.firstIndex(of: rank)!))
            #expect(result[1] == 3)
            #expect(result[2] == Float(sameParity.reduce(0, +)))
            let trio = Array(result[3...])
            #expect(trio == ([4, 1, 2].contains(rank) ? [4, 1, 2] : [-1, -1, -1]))
        }
    }

    @Test func asyncWorkOnTwoGroupsOverlaps() throws {
        let results = try LocalWorld.run(size: 4, threadsPerRank: 1) { world -> [Float] in
            let pairs = try world.split(color: world.rank / 2, key: world.rank)!
            let a = Tensor.full([100_003], value: Float(world.rank + 1)), b = Tensor.full([17], value: Float(world.rank + 1))
            let worldWork = (0..<3).map { _ in world.allReduceAsync(CommunicationBuffer(a), operation: .sum) }
            let pairWork = pairs.allReduceAsync(CommunicationBuffer(b), operation: .max)
            try pairWork.wait()
            for work in worldWork { try work.wait() }
            return [a.toArray()[0], a.toArray()[100_002], b.toArray()[0]]
        }
        for (rank, result) in results.enumerated() {
            // 1+2+3+4 = 10, three times in order: 10·4·4 = 160.
            #expect(result[0] == 160 && result[1] == 160)
            #expect(result[2] == Float(rank < 2 ? 2 : 4))
        }
    }

    @Test func aRankThatSkipsACollectiveProducesATimeoutNotAHang() throws {
        CommunicationTimeout.set(1)
        defer { CommunicationTimeout.set(20) }
        let messages = try LocalWorld.run(size: 3, threadsPerRank: 1) { group -> String in
            let tensor = Tensor.ones([8])
            do {
                if group.rank != 2 { try group.allReduce(tensor) }
                return "no error"
            } catch {
                return "\(error)"
            }
        }
        for message in messages.prefix(2) {
            #expect(message.contains("timed out"), "\(message)")
            #expect(message.contains("all-reduce"))
            #expect(message.contains("#0"))
            #expect(message.contains("'world'"))
            #expect(message.contains("ranks [2]"))
        }
        #expect(messages[2] == "no error")
    }

    @Test func aRankThatFailsStopsItsPeersAtOnce() throws {
        struct RankFailure: Error, CustomStringConvertible { var description: String { "rank 1 gave up" } }
        let seen = PeerErrors()
        do {
            _ = try LocalWorld.run(size: 3, threadsPerRank: 1) { group -> Int in
                if group.rank == 1 { throw RankFailure() }
                do {
                    try group.allReduce(Tensor.ones([4]))
                } catch {
                    seen.append("\(error)")
                    throw error
                }
                return 0
            }
            Issue.record("the run should have failed")
        } catch {
            #expect("\(error)" == "rank 1 gave up", "the root cause should be rethrown, got \(error)")
        }
        // The peers were released by the failure (peer failed), not by their timeouts.
        let errors = seen.all
        #expect(errors.count == 2)
        for error in errors {
            #expect(error.contains("peer failed") && error.contains("rank 1 stopped with an error: rank 1 gave up"), "\(error)")
        }
    }

    @Test func mismatchedCountsAreReportedWithBothSides() throws {
        let messages = try LocalWorld.run(size: 2, threadsPerRank: 1) { group -> String in
            let tensor = Tensor.ones([group.rank == 0 ? 10 : 12])
            do {
                try group.allReduce(tensor)
                return "no error"
            } catch {
                return "\(error)"
            }
        }
        let reported = messages.first { $0.contains("mismatch") && $0.contains("count 10") && $0.contains("count 12") }
        #expect(reported != nil, "\(messages)")
        #expect(messages.allSatisfy { $0 != "no error" })
    }

    @Test func aReceiveWithoutASendTimesOut() throws {
        CommunicationTimeout.set(0.5)
        defer { CommunicationTimeout.set(20) }
        let messages = try LocalWorld.run(size: 2, threadsPerRank: 1) { group -> String in
            guard group.rank == 0 else { return "" }
            do {
                try group.receive(CommunicationBuffer(Tensor.zeros([4])), from: 1, tag: 9)
                return "no error"
            } catch {
                return "\(error)"
            }
        }
        #expect(messages[0].contains("timed out") && messages[0].contains("rank 1") && messages[0].contains("tag 9"))
    }

    @Test func badArgumentsAreRejectedLocally() throws {
        let messages = try LocalWorld.run(size: 2, threadsPerRank: 1) { group -> [String] in
            var errors: [String] = []
            for work in [group.broadcastAsync(CommunicationBuffer(Tensor.zeros([2])), root: 5),
                         group.sendAsync(CommunicationBuffer(Tensor.zeros([2])), to: group.rank, tag: 0),
                         group.reduceScatterAsync(input: CommunicationBuffer(Tensor.zeros([10])), output: CommunicationBuffer(Tensor.zeros([4])), operation: .sum)] {
                do { try work.wait() } catch { errors.append("\(error)") }
            }
            return errors
        }
        for errors in messages {
            #expect(errors.count == 3)
            #expect(errors[0].contains("root 5"))
            #expect(errors[2].contains("chunk"))
        }
    }
}

/// Error messages collected from rank threads.
final class PeerErrors: @unchecked Sendable {
    private let lock = NSLock()
    private var messages: [String] = []
    func append(_ message: String) { lock.lock(); messages.append(message); lock.unlock() }
    var all: [String] { lock.lock(); defer { lock.unlock() }; return messages }
}
