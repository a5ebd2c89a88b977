import ConvoyNN
import ConvoyParallel
import ConvoyTensor
import Testing

/// The message a partition constructor throws, or nil (and a recorded failure) when it does not throw.
private func partitionError(_ make: () throws -> PipelinePartition) -> String? {
    let error = #expect(throws: ConvoyError.self) { _ = try make() }
    return error.map { "\($0)" }
}

@Suite struct PipelinePartitionTests {
    @Test func balancedSplitsEvenly() throws {
        let partition = try PipelinePartition.balanced(layers: 12, stages: 4)
        #expect(partition.layerRanges == [0..<3, 3..<6, 6..<9, 9..<12])
        #expect(partition.virtualStages(onRank: 2) == [2])
        #expect(partition.rank(ofVirtualStage: 3) == 3)
    }

    @Test func balancedPrefersEvenThenEarlierStages() throws {
        // Bottleneck 3 allows [3, 3, 3, 1]; the most even is [3, 3, 2, 2] (or [2, 3, 3, 2], …): more blocks earlier.
        #expect(try PipelinePartition.balanced(layers: 10, stages: 4).stageLayers == [3, 3, 2, 2])
        #expect(try PipelinePartition.balanced(layers: 7, stages: 2).stageLayers == [4, 3])
        #expect(try PipelinePartition.balanced(layers: 5, stages: 5).stageLayers == [1, 1, 1, 1, 1])
    }

    @Test func extrasMoveBlocksOffTheEnds() throws {
        let both = try PipelinePartition.balanced(layers: 12, stages: 4, firstStageExtraCost: 1.5, lastStageExtraCost: 1.5)
        #expect(both.stageLayers == [2, 4, 4, 2])
        let head = try PipelinePartition.balanced(layers: 12, stages: 4, lastStageExtraCost: 2)
        #expect(head.stageLayers.last! < 3)
        #expect(head.stageLayers.reduce(0, +) == 12)
        // The head costs 3 blocks: a single pipeline stage is everything.
        let single = try PipelinePartition.balanced(layers: 6, stages: 1, firstStageExtraCost: 1, lastStageExtraCost: 3)
        #expect(single.layerRanges == [0..<6])
    }

    @Test func balancedHandlesFractionalCosts() throws {
        // Stage costs 0.1·k + 0.3 on the ends: 1.2 each, though 9 · 0.1 + 0.3 and 12 · 0.1 differ in the last bits.
        let partition = try PipelinePartition.balanced(layers: 30, stages: 3, blockCost: 0.1, firstStageExtraCost: 0.3, lastStageExtraCost: 0.3)
        #expect(partition.stageLayers == [9, 12, 9])
    }

    @Test func interleavedRangesAlternateAcrossRanks() throws {
        let partition = try PipelinePartition.balanced(layers: 8, stages: 2, virtualStages: 2)
        #expect(partition.layerRanges == [0..<2, 2..<4, 4..<6, 6..<8])
        #expect(partition.virtualStages(onRank: 0) == [0, 2])
        #expect(partition.layerRanges(onRank: 0) == [0..<2, 4..<6])
        #expect(partition.layerRanges(onRank: 1) == [2..<4, 6..<8])
        #expect(partition.rank(ofVirtualStage: 2) == 0)
    }

    @Test func explicitCountsAreUsedAsGiven() throws {
        let partition = try PipelinePartition.explicit(stageLayers: [3, 3], layers: 6, stages: 2)
        #expect(partition.layerRanges == [0..<3, 3..<6])
        let interleaved = try PipelinePartition.explicit(stageLayers: [1, 2, 2, 1], layers: 6, stages: 2, virtualStages: 2)
        #expect(interleaved.layerRanges(onRank: 1) == [1..<3, 5..<6])
        #expect(interleaved == (try PipelinePartition.explicit(stageLayers: [1, 2, 2, 1], layers: 6, stages: 2, virtualStages: 2)))
    }

    @Test func refusesImpossiblePartitions() {
        let sum = partitionError { try .explicit(stageLayers: [2, 3], layers: 6, stages: 2) }
        #expect(sum?.contains("adds up to 5") == true && sum?.contains("the model has 6") == true)
        let count = partitionError { try .explicit(stageLayers: [2, 2, 2], layers: 6, stages: 2) }
        #expect(count?.contains("3 counts") == true && count?.contains("= 2") == true)
        let empty = partitionError { try .explicit(stageLayers: [6, 0], layers: 6, stages: 2) }
        #expect(empty?.contains("virtual stage 1 0 layers") == true)
        let few = partitionError { try .balanced(layers: 3, stages: 4) }
        #expect(few?.contains("the model has 3 layers but pp × virtual_stages = 4 stages") == true)
        let fewChunks = partitionError { try .balanced(layers: 6, stages: 2, virtualStages: 4) }
        #expect(fewChunks?.contains("= 8 stages") == true)
        #expect(partitionError { try .explicit(stageLayers: [1], layers: 1, stages: 0) }?.contains("pp = 0") == true)
        #expect(partitionError { try .balanced(layers: 4, stages: 2, blockCost: 0) }?.contains("got 0") == true)
        #expect(partitionError { try .balanced(layers: 4, stages: 2, lastStageExtraCost: -1) }?.contains("last -1") == true)
    }
}

@Suite struct PipelinePlanTests {
    @Test func planCountsEveryParameterOnceBesidesTheTiedEmbedding() throws {
        let model = GPTConfiguration(vocabularySize: 256, contextLength: 32, layers: 6, heads: 4, width: 64)
        var options = PipelineOptions()
        options.stages = 3
        let plan = try PipelinePlan(model: model, options: options, dataParallelSize: 2, microBatches: 6, microBatchSize: 2)
        let built = try GPT(model, seed: 1)
        // The head's copy of the token embedding is the only parameter counted twice.
        #expect(plan.stages.map(\.parameters).reduce(0, +) == built.parameterCount + model.vocabularySize * model.width)
        #expect(plan.stages.map { $0.chunks.map(\.layers.count).reduce(0, +) } == [2, 2, 2])
        #expect(plan.stages.map(\.peakStashed) == [3, 2, 1])
        #expect(abs(plan.formulaBubble - 2.0 / 8.0) < 1e-12)
        #expect(plan.predictedBubble >= plan.formulaBubble - 1e-9, "the head makes the last stage slower, never faster")
        #expect(plan.pipelineGroups == [[0, 2, 4], [1, 3, 5]] && plan.dataParallelGroups == [[0, 1], [2, 3], [4, 5]])
        #expect(plan.embeddingGroups == [[0, 4], [1, 5]])
    }
}
