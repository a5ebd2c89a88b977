import ConvoyComm
import ConvoyNN
import ConvoyParallel
import ConvoyTensor
import Foundation
import Testing

let dpConfiguration = GPTConfiguration(vocabularySize: 32, contextLength: 8, layers: 2, heads: 2, width: 16)

/// A GPT plus a layer the forward never uses.
final class GPTWithUnusedLayer: Module {
    let gpt: GPT
    let unused: Linear
    init(seed: UInt64) throws {
        gpt = try GPT(dpConfiguration, seed: seed)
        unused = Linear(16, 4, initializer: Initializer(seed: seed), name: "unused")
        super.init()
        assignParameterNames()
    }
    override var children: [(name: String, module: Module)] { [("gpt", gpt), ("unused", unused)] }
}

/// The global batch of step s: `batch` sequences of 8 tokens.
func globalBatch(step: Int, batch: Int) -> (inputs: [[Int32]], targets: [[Int32]]) {
    let generator = PhiloxRandom(seed: 77, stream: UInt64(step))
    let inputs = (0..<batch).map { b in (0..<8).map { Int32(generator.block(UInt64(b * 8 + $0)).0 % 32) } }
    return (inputs, inputs.map { $0.map { ($0 * 7 + 3) % 32 } })
}

func makeOptimizer(_ model: Module) -> any Optimizer {
    SGD(ParameterGroup.decayingMatrices(of: model, weightDecay: 0.1), learningRate: 0.1, momentum: 0.9)
}

/// One process, whole global batch, mean loss.
func referenceWeights(steps: Int, batch: Int, unusedLayer: Bool = false) throws -> [[Float]] {
    let holder: Module = unusedLayer ? try GPTWithUnusedLayer(seed: 1) : try GPT(dpConfiguration, seed: 1)
    let gpt = (holder as? GPTWithUnusedLayer)?.gpt ?? holder as! GPT
    let optimizer = makeOptimizer(holder)
    for step in 0..<steps {
        let data = globalBatch(step: step, batch: batch)
        try gpt.loss(data.inputs.flatMap { $0 }, targets: data.targets.flatMap { $0 }, batch: batch, time: 8).backward()
        optimizer.step()
        optimizer.zeroGradients()
    }
    return holder.parameters.map { $0.toArray() }
}

/// `ranks` Local ranks; each starts from a different seed (the broadcast must fix that), computes its slice
/// in `microSteps` micro-batches, and steps its optimizer.
func dataParallelWeights(ranks: Int, steps: Int, batch: Int, options: DataParallelOptions, microSteps: Int = 1, unusedLayer: Bool = false) throws -> [[[Float]]] {
    try LocalWorld.run(size: ranks, threadsPerRank: 1) { group in
        let holder: Module = unusedLayer ? try GPTWithUnusedLayer(seed: 1 + UInt64(group.rank)) : try GPT(dpConfiguration, seed: 1 + UInt64(group.rank))
        let gpt = (holder as? GPTWithUnusedLayer)?.gpt ?? holder as! GPT
        let parallel = try DataParallel(module: holder, group: group, options: options)
        let optimizer = makeOptimizer(holder)
        let perRank = batch / ranks, perMicro = perRank / microSteps
        for step in 0..<steps {
            let data = globalBatch(step: step, batch: batch)
            for micro in 0..<microSteps {
                let start = group.rank * perRank + micro * perMicro
                let inputs = data.inputs[start..<(start + perMicro)].flatMap { $0 }, targets = data.targets[start..<(start + perMicro)].flatMap { $0 }
                let run = { gpt.loss(inputs, targets: targets, batch: perMicro, time: 8) * (1 / Float(microSteps)) }
                if micro < microSteps - 1 { try parallel.withoutSynchronization { try run().backward() } } else { try run().backward() }
            }
            try parallel.finishGradientSynchronization()
            optimizer.step()
            parallel.zeroGradients()
        }
        return holder.parameters.map { $0.toArray() }
    }
}

func maxRelativeError(_ a: [[Float]], _ b: [[Float]]) -> Float {
    zip(a, b).map { x, y in
        let scale = max(x.map(abs).max() ?? 0, 1e-6)
        return zip(x, y).map { abs($0 - $1) }.max()! / scale
    }.max()!
}

@Suite(.serialized) struct DataParallelTests {
    init() { CommunicationTimeout.set(30) }

    static let variants: [(String, DataParallelOptions)] = {
        var result: [(String, DataParallelOptions)] = []
        for bucketing in [true, false] {
            for overlap in [true, false] {
                for fuse in [FusionChoice.on, .off] {
                    var options = DataParallelOptions()
                    options.bucketing = bucketing
                    options.overlapGradReduce = overlap
                    options.fuseAllReduce = fuse
                    // Small caps so the tiny model still gets several buckets.
                    options.firstBucketCapMB = 0.002
                    options.bucketCapMB = 0.01
                    result.append(("bucketing \(bucketing) overlap \(overlap) fuse \(fuse)", options))
                }
            }
        }
        return result
    }()

    @Test func everyVariantMatchesOneProcessWithTwoRanks() throws {
        let reference = try referenceWeights(steps: 10, batch: 8)
        for (label, options) in Self.variants {
            let results = try dataParallelWeights(ranks: 2, steps: 10, batch: 8, options: options)
            for (rank, weights) in results.enumerated() {
                let error = maxRelativeError(weights, reference)
                #expect(error <= 1e-5, "\(label), rank \(rank): relative error \(error)")
            }
        }
    }

    @Test func fourRanksWithGradientAccumulationMatchOneProcess() throws {
        let reference = try referenceWeights(steps: 10, batch: 16)
        let results = try dataParallelWeights(ranks: 4, steps: 10, batch: 16, options: Self.variants[0].1, microSteps: 2)
        for weights in results { #expect(maxRelativeError(weights, reference) <= 1e-5) }
        #expect(results[1] == results[3], "replicas must stay bit-identical")
    }

    @Test func anUnusedParameterIsAnErrorUnlessFindUnusedIsOn() throws {
        do {
            _ = try dataParallelWeights(ranks: 2, steps: 1, batch: 4, options: DataParallelOptions(), unusedLayer: true)
            Issue.record("an unused parameter should have been reported")
        } catch {
            #expect("\(error)".contains("unused.weight") && "\(error)".contains("find_unused_parameters"))
        }
        var options = DataParallelOptions()
        options.findUnusedParameters = true
        let reference = try referenceWeights(steps: 10, batch: 8, unusedLayer: true)
        let results = try dataParallelWeights(ranks: 2, steps: 10, batch: 8, options: options, unusedLayer: true)
        for weights in results { #expect(maxRelativeError(weights, reference) <= 1e-5) }
    }

    @Test func bucketsFollowReverseRegistrationOrderAndCaps() throws {
        // Sizes in bytes, registration order; walked from the end.
        let buckets = BucketAssignment.assign(byteSizes: [400, 100, 100, 300, 50, 50], firstBucketCapBytes: 100, bucketCapBytes: 450)
        #expect(buckets == [[5, 4], [3, 2], [1], [0]])
        #expect(BucketAssignment.assign(byteSizes: [10, 10, 10], firstBucketCapBytes: 1000, bucketCapBytes: 1000) == [[2, 1, 0]])
        #expect(BucketAssignment.assign(byteSizes: [500], firstBucketCapBytes: 100, bucketCapBytes: 100) == [[0]])
        #expect(BucketAssignment.assign(byteSizes: [], firstBucketCapBytes: 100, bucketCapBytes: 100).isEmpty)
    }

    @Test func fusedGradientsAreViewsAndDistributedParametersAreSkipped() throws {
        let results = try LocalWorld.run(size: 2, threadsPerRank: 1) { group -> [Int] in
            let model = try GPT(dpConfiguration, seed: 5)
            model.blocks[0].mlp.fullyConnected.weight.placement = TensorPlacement(["dp": .shard(dim: 0)])
            let shardBefore = model.blocks[0].mlp.fullyConnected.weight.toArray()
            var options = DataParallelOptions()
            options.fuseAllReduce = .on
            let parallel = try DataParallel(module: model, group: group, options: options)
            let views = parallel.parameters.filter { $0.parameter.grad?.storage === parallel.fusedGradients?.storage }.count
            let skipped = parallel.parameters.contains { $0.name == "h.0.mlp.c_fc.weight" } ? 0 : 1
            // The distributed parameter was not broadcast either (ranks have the same seed here, so equal anyway).
            let unchanged = model.blocks[0].mlp.fullyConnected.weight.toArray() == shardBefore ? 1 : 0
            return [views, parallel.parameters.count, skipped, unchanged, parallel.bucketCount]
        }
        for result in results {
            #expect(result[0] == result[1])
            #expect(result[2] == 1 && result[3] == 1)
            #expect(result[4] >= 1)
        }
    }

    /// A tensor-parallel shard is replicated across its data-parallel group: data parallelism must still
    /// broadcast and average it (the old `isDistributed` flag skipped it).
    @Test func tensorParallelShardsAreStillReplicatedAlongDP() throws {
        let results = try LocalWorld.run(size: 2, threadsPerRank: 1) { group -> [Float] in
            let model = try GPT(dpConfiguration, seed: 40 + UInt64(group.rank))
            let shard = model.blocks[0].mlp.fullyConnected.weight
            shard.placement = TensorPlacement(["tp": .shard(dim: 1)])
            let parallel = try DataParallel(module: model, group: group)
            #expect(parallel.parameters.contains { $0.parameter === shard })
            return shard.toArray()
        }
        #expect(results[0] == results[1])
    }

    @Test func replicasStartIdenticalWhateverTheirSeeds() throws {
        let results = try LocalWorld.run(size: 3, threadsPerRank: 1) { group -> [Float] in
            let model = try GPT(dpConfiguration, seed: 100 + UInt64(group.rank))
            _ = try DataParallel(module: model, group: group)
            return model.parameters.flatMap { $0.toArray() }
        }
        #expect(results[1] == results[0] && results[2] == results[0])
        #expect(try GPT(dpConfiguration, seed: 100).parameters.flatMap { $0.toArray() } == results[0])
    }
}

/// Two parameters of the same shape, so a collective that reduces one into the other passes every shape check.
final class TwinWeights: Module {
    let first = Tensor(shape: [4], values: [1, 2, 3, 4], requiresGrad: true)
    let second = Tensor(shape: [4], values: [5, 6, 7, 8], requiresGrad: true)
    override init() {
        super.init()
        assignParameterNames()
    }
    override var localParameters: [(name: String, parameter: Parameter)] { [("first", first), ("second", second)] }
}

@Suite struct BucketLaunchOrderTests {
    /// Without bucketing every parameter is its own bucket. Launched in readiness order, a rank that uses a
    /// parameter its peer does not (find_unused_parameters, rank-dependent usage) reduces it while the peer
    /// reduces the other, same-shaped one: the sums cross. Launched in the fixed bucket order, each gradient is
    /// averaged with its own counterpart.
    @Test(arguments: [false, true])
    func rankDependentUsageReducesEachGradientWithItsOwn(overlap: Bool) throws {
        let x = Tensor(shape: [4], values: [1, 1, 1, 1])
        let y = Tensor(shape: [4], values: [2, 2, 2, 2])
        let results = try LocalWorld.run(size: 2, threadsPerRank: 1) { group -> [[Float]] in
            let model = TwinWeights()
            var options = DataParallelOptions()
            options.bucketing = false
            options.findUnusedParameters = true
            options.overlapGradReduce = overlap
            options.fuseAllReduce = .off
            let parallel = try DataParallel(module: model, group: group, options: options)
            // Rank 0 uses both weights, `first` last, so its gradient is final first; rank 1 uses only `second`.
            let loss = group.rank == 0 ? (model.second * y).sum() + (model.first * x).sum() * 3 : (model.second * y).sum()
            try loss.backward()
            try parallel.finishGradientSynchronization()
            return [model.first.grad?.toArray() ?? [], model.second.grad?.toArray() ?? []]
        }
        // first: (3·x + 0) / 2; second: (y + y) / 2.
        for result in results {
            #expect(result[0] == [1.5, 1.5, 1.5, 1.5], "first: \(result[0])")
            #expect(result[1] == [2, 2, 2, 2], "second: \(result[1])")
        }
    }
}
