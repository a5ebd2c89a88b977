import ConvoyTensor
import ConvoyTrain
import Testing

@Suite struct DistributedSamplerTests {
    /// Every (world size, micro-batch count) split of a global batch of 12.
    static let splitsOfTwelve: [(world: Int, micro: Int)] = [1, 2, 3, 4, 6].flatMap { world in
        (1...(12 / world)).filter { (12 / world) % $0 == 0 }.map { (world: world, micro: $0) }
    }

    @Test func enumeratesEverySplit() {
        // world 1: 1,2,3,4,6,12; world 2: 1,2,3,6; world 3: 1,2,4; world 4: 1,3; world 6: 1,2.
        #expect(Self.splitsOfTwelve.count == 17)
    }

    @Test func everySplitCoversTheGlobalBatchExactlyOnce() throws {
        for split in Self.splitsOfTwelve {
            let samplers = try (0..<split.world).map {
                try DistributedSampler(globalBatch: 12, worldSize: split.world, rank: $0, microBatches: split.micro)
            }
            for step in [0, 1, 5] {
                var seen: [Int] = []
                for sampler in samplers {
                    #expect(sampler.microBatchSize == 12 / (split.world * split.micro))
                    for micro in 0..<split.micro {
                        let indices = sampler.indices(step: step, microBatch: micro)
                        #expect(indices.count == sampler.microBatchSize)
                        // The first sequence's position in the global batch does not depend on the split.
                        #expect(sampler.firstSequence(microBatch: micro) == indices.lowerBound - step * 12)
                        seen += indices
                    }
                }
                #expect(seen.count == 12, "world \(split.world) × micro \(split.micro) step \(step)")
                #expect(seen.sorted() == Array((step * 12)..<((step + 1) * 12)),
                        "world \(split.world) × micro \(split.micro) step \(step): \(seen)")
            }
        }
    }

    @Test func ranksAndMicroBatchesFollowGlobalBatchOrder() throws {
        // Rank-major, then micro-batch: rank 1 of 2 with 3 micro-batches starts at 6, 8, 10.
        let sampler = try DistributedSampler(globalBatch: 12, worldSize: 2, rank: 1, microBatches: 3)
        #expect((0..<3).map { sampler.firstSequence(microBatch: $0) } == [6, 8, 10])
        #expect(sampler.indices(step: 2, microBatch: 1) == 32..<34)
    }

    @Test func oneRankWalksTheDataInOrder() throws {
        let sampler = try DistributedSampler(globalBatch: 8)
        #expect(sampler.indices(step: 3, microBatch: 0) == 24..<32)
        #expect(sampler.microBatchSize == 8)
    }

    @Test(arguments: [(batch: 10, world: 4, micro: 1), (batch: 12, world: 3, micro: 3), (batch: 7, world: 1, micro: 2)])
    func refusesABatchThatDoesNotSplitEvenly(batch: Int, world: Int, micro: Int) {
        let error = #expect(throws: ConvoyError.self) {
            try DistributedSampler(globalBatch: batch, worldSize: world, rank: 0, microBatches: micro)
        }
        guard case .invalidConfiguration(let text) = error else {
            Issue.record("expected invalidConfiguration, got \(String(describing: error))")
            return
        }
        #expect(text.contains("batch \(batch)"))
        #expect(text.contains("multiple of \(world * micro)"))
    }

    @Test(arguments: [(rank: 2, world: 2), (rank: -1, world: 2), (rank: 0, world: 0)])
    func refusesARankOutsideTheWorld(rank: Int, world: Int) {
        let error = #expect(throws: ConvoyError.self) {
            try DistributedSampler(globalBatch: 12, worldSize: world, rank: rank)
        }
        guard case .invalidConfiguration(let text) = error else {
            Issue.record("expected invalidConfiguration, got \(String(describing: error))")
            return
        }
        #expect(text.contains("rank \(rank)"))
    }

    @Test func refusesNonPositiveBatchAndMicroBatches() {
        #expect(throws: ConvoyError.self) { try DistributedSampler(globalBatch: 0) }
        #expect(throws: ConvoyError.self) { try DistributedSampler(globalBatch: 12, microBatches: 0) }
    }
}
