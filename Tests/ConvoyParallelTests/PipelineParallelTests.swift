import ConvoyComm
import ConvoyNN
import ConvoyParallel
import ConvoyTensor
import Foundation
import Testing

/// Four blocks, so that pp 4 has a block per stage and pp 2 × v 2 a block per chunk.
let pipelineConfiguration = GPTConfiguration(vocabularySize: 32, contextLength: 8, layers: 4, heads: 2, width: 16)

/// One process over the whole global batch (mean loss), SGD with momentum, optionally clipped.
func pipelineReference(steps: Int, batch: Int, clip: Float) throws -> [[Float]] {
    let model = try GPT(pipelineConfiguration, seed: 1)
    let optimizer = makeOptimizer(model)
    for step in 0..<steps {
        let data = globalBatch(step: step, batch: batch)
        try model.loss(data.inputs.flatMap { $0 }, targets: data.targets.flatMap { $0 }, batch: batch, time: 8).backward()
        if clip > 0 { GradientClipping.clip(model.parameters, maxNorm: clip) }
        optimizer.step()
        optimizer.zeroGradients()
    }
    return model.parameters.map { $0.toArray() }
}

struct PipelineRun {
    var pp: Int
    var dp: Int = 1
    var schedule: PipelineScheduleKind = .oneForwardOneBackward
    var virtualStages = 1
    var microBatches: Int
    var zeroStage = 0
    var clip: Float = 0
    var stageLayers: [Int]? = nil
}

/// Trains `run` on pp·dp Local ranks (each pipeline replica from its own seed: the broadcasts must fix it) and
/// returns the whole model collected on world rank 0, with every rank's losses and peak stash.
func pipelineWeights(_ run: PipelineRun, steps: Int, batch: Int) throws -> (weights: [[Float]], losses: [[Double]], peaks: [Int]) {
    var options = PipelineOptions()
    options.stages = run.pp
    options.schedule = run.schedule
    options.virtualStages = run.virtualStages
    options.stageLayers = run.stageLayers
    var ddp = DataParallelOptions()
    ddp.firstBucketCapMB = 0.002
    ddp.bucketCapMB = 0.01
    let frozen = options, frozenDDP = ddp
    let results = try LocalWorld.run(size: run.pp * run.dp, threadsPerRank: 1) { world -> ([[Float]]?, [Double], Int) in
        let mesh = try DeviceMesh(dp: run.dp, pp: run.pp, tp: 1)
        let replica = mesh.position(along: .dp, of: world.rank)
        let model = try GPT(pipelineConfiguration, seed: 1 + UInt64(replica))
        let pipeline = try PipelineParallel(model: model, world: world, options: frozen, microBatches: run.microBatches, zeroStage: run.zeroStage,
                                            dataParallelOptions: frozenDDP, weightDecay: 0.1,
                                            makeOptimizer: { module, _ in makeOptimizer(module) },
                                            makeShardOptimizer: { SGD($0, learningRate: 0.1, momentum: 0.9) })
        let perReplica = batch / run.dp, perMicro = perReplica / run.microBatches
        var losses: [Double] = []
        var peak = 0
        for step in 0..<steps {
            let data = globalBatch(step: step, batch: batch)
            let result = try pipeline.trainStep(maxGradientNorm: run.clip) { micro in
                let first = replica * perReplica + micro * perMicro
                return PipelineExecutor.MicroBatch(tokens: data.inputs[first..<(first + perMicro)].flatMap { $0 },
                                                   targets: data.targets[first..<(first + perMicro)].flatMap { $0 },
                                                   batch: perMicro, time: 8, lossScale: Float(perMicro * run.dp) / Float(batch),
                                                   lossWeight: Double(perMicro) / Double(batch), context: ForwardContext(training: true))
            }
            losses.append(result.loss)
            peak = max(peak, result.peakStashed)
        }
        try pipeline.collectModel()
        let weights = world.rank == 0 ? model.parameters.map { $0.toArray() } : nil
        pipeline.releaseCollectedModel()
        return (weights, losses, peak)
    }
    return (results[0].0!, results.map(\.1), results.map(\.2))
}

@Suite(.serialized) struct PipelineParallelTests {
    init() { CommunicationTimeout.set(30) }

    static let runs: [PipelineRun] = [
        PipelineRun(pp: 2, schedule: .gpipe, microBatches: 4),
        PipelineRun(pp: 2, microBatches: 4),
        PipelineRun(pp: 4, schedule: .gpipe, microBatches: 4),
        PipelineRun(pp: 4, microBatches: 8),
        PipelineRun(pp: 2, schedule: .interleaved, virtualStages: 2, microBatches: 4),
        PipelineRun(pp: 2, dp: 2, microBatches: 2),
        PipelineRun(pp: 2, dp: 2, microBatches: 2, zeroStage: 1),
        PipelineRun(pp: 2, dp: 2, microBatches: 2, zeroStage: 1, clip: 0.05),
        PipelineRun(pp: 2, dp: 2, microBatches: 4, zeroStage: 2, clip: 0.05),
        PipelineRun(pp: 2, dp: 2, schedule: .gpipe, microBatches: 2, zeroStage: 2),
        PipelineRun(pp: 2, microBatches: 4, clip: 0.05, stageLayers: [1, 3]),
    ]

    @Test(arguments: runs.indices)
    func matchesOneProcess(index: Int) throws {
        let run = Self.runs[index]
        let reference = try pipelineReference(steps: 10, batch: 8, clip: run.clip)
        let result = try pipelineWeights(run, steps: 10, batch: 8)
        let error = maxRelativeError(result.weights, reference)
        #expect(error <= 1e-5, "\(run): relative error \(error)")
        // Every rank reports the same global loss.
        for losses in result.losses { #expect(losses == result.losses[0]) }
        if run.schedule == .oneForwardOneBackward {
            for peak in result.peaks { #expect(peak <= run.pp, "1F1B stashes at most pp micro-batches, got \(peak)") }
        }
        if run.schedule == .gpipe { #expect(result.peaks.max() == run.microBatches) }
    }

    @Test func stagesOwnDisjointLayersAndReleaseTheRest() throws {
        let model = try GPT(pipelineConfiguration, seed: 1)
        let partition = try PipelinePartition.explicit(stageLayers: [1, 3], layers: 4, stages: 2)
        let first = try PipelineStageModule(model: model, partition: partition, pipelineRank: 0)
        #expect(first.ownedParameters.map(\.name).contains("wte.weight"))
        #expect(first.ownedParameters.map(\.name).contains("h.0.attn.c_attn.weight"))
        #expect(!first.ownedParameters.map(\.name).contains("h.1.attn.c_attn.weight"))
        #expect(model.blocks[1].attention.qkvProjection.weight.storage.isReleased)
        #expect(first.tiedEmbedding != nil && first.holdsInput && !first.holdsLoss)
        let names = PipelineStageModule.ownedNames(partition: partition, model: model, pipelineRank: 1)
        #expect(names.contains("ln_f.weight") && names.contains("wte.weight") && !names.contains("wpe.weight"))
    }

    @Test func refusedConfigurations() throws {
        var base = PipelineOptions()
        base.stages = 2
        let options = base
        let errors = try LocalWorld.run(size: 2, threadsPerRank: 1) { world -> [String] in
            var messages: [String] = []
            func attempt(_ options: PipelineOptions, microBatches: Int, zeroStage: Int = 0) {
                do {
                    _ = try PipelineParallel(model: try GPT(pipelineConfiguration, seed: 1), world: world, options: options, microBatches: microBatches,
                                             zeroStage: zeroStage, weightDecay: 0, makeOptimizer: { module, _ in makeOptimizer(module) },
                                             makeShardOptimizer: { SGD($0, learningRate: 0.1) })
                    messages.append("accepted")
                } catch { messages.append("\(error)") }
            }
            attempt(options, microBatches: 2, zeroStage: 3)
            var interleaved = options
            interleaved.schedule = .interleaved
            interleaved.virtualStages = 2
            attempt(interleaved, microBatches: 3)
            var deep = options
            deep.stages = 2
            deep.virtualStages = 4
            deep.schedule = .interleaved
            attempt(deep, microBatches: 2)
            var uneven = options
            uneven.stageLayers = [1, 2]
            attempt(uneven, microBatches: 2)
            return messages
        }
        for messages in errors {
            #expect(messages[0].contains("zero_stage 3") && messages[0].contains("zero_stage 1 or 2"), "\(messages[0])")
            #expect(messages[1].contains("multiple of pp"), "\(messages[1])")
            #expect(messages[2].contains("4 layers"), "\(messages[2])")
            #expect(messages[3].contains("3") && messages[3].contains("4"), "\(messages[3])")
        }
    }
}
