import ConvoyComm
import ConvoyNN
import ConvoyTensor

/// Pipeline parallelism composed with data parallelism (PaddlePaddle's pipeline meta-optimizer): the world is
/// a `pp × dp` mesh (``ConvoyComm/DeviceMesh``); each pipeline runs a ``PipelineSchedule`` over its stages with
/// ``PipelineExecutor``, and each stage's replicas form a data-parallel group that reduces the stage's gradients
/// after the last micro-batch with ``DataParallel`` (buckets, fusion) or ZeRO stage 1 or 2 (``DistributedOptimizer``;
/// stage 2 stages every micro-batch's gradients and reduce-scatters them once, after the last).
///
/// The tied token embedding lives on the first stage (input) and the last (head); both copies start equal (same
/// seed, then broadcast within the embedding group of those two ranks) and their gradients are summed across
/// that group every step before the data-parallel reduction, so the tie stays exact. Gradient clipping takes
/// the norm over all stages, counting the tied weight once.
public final class PipelineParallel {
    public let mesh: DeviceMesh
    public let groups: MeshGroups
    /// The first and last stage of this rank's pipeline (nil when this rank is neither, or pp is 1).
    public let embeddingGroup: (any ProcessGroup)?
    public let stage: PipelineStageModule
    public let schedule: PipelineSchedule
    public let executor: PipelineExecutor
    /// Stage-0 data parallelism for this stage's replicas (nil with one replica or under ZeRO).
    public let dataParallel: DataParallel?
    /// ZeRO stage 1 or 2 over this stage's replicas, or nil.
    public let zero: DistributedOptimizer?
    /// The optimizer over this rank's parameters (its shard under ZeRO).
    public let optimizer: any Optimizer
    private let world: any ProcessGroup

    /// Builds this rank's stage of `model` (collective over `world`: every rank calls it with the same arguments).
    ///
    /// - Parameters:
    ///   - makeOptimizer: builds the optimizer over the stage's parameters (`externalGradients`: data
    ///     parallelism owns a fused gradient buffer).
    ///   - makeShardOptimizer: builds the optimizer over ZeRO shard slices.
    /// - Throws: ``ConvoyTensor/ConvoyError/invalidConfiguration(_:)`` for a world that is not pp·dp, a ZeRO stage
    ///   other than 0–2, or a partition/schedule that does not fit.
    public init(model: GPT, world: any ProcessGroup, options: PipelineOptions, microBatches: Int, zeroStage: Int = 0,
                dataParallelOptions: DataParallelOptions = DataParallelOptions(), weightDecay: Float, timeline: Timeline? = nil,
                makeOptimizer: (Module, _ externalGradients: Bool) -> any Optimizer,
                makeShardOptimizer: ([ParameterGroup]) -> any Optimizer) throws {
        guard world.size % options.stages == 0 else {
            throw ConvoyError.invalidConfiguration("world size \(world.size) is not a multiple of pp = \(options.stages); run pp·dp ranks")
        }
        guard zeroStage <= 2 else {
            throw ConvoyError.invalidConfiguration("zero_stage \(zeroStage) does not combine with pipeline parallelism: stage 3 gathers each layer's parameters for every forward and backward, and a pipeline interleaves the forwards and backwards of many micro-batches; use zero_stage 1 or 2 with pp > 1")
        }
        let partition = try options.partition(for: model.configuration)
        schedule = try PipelineSchedule(kind: options.schedule, stages: options.stages, microBatches: microBatches, virtualStages: options.virtualStages)
        mesh = try DeviceMesh(dp: world.size / options.stages, pp: options.stages, tp: 1, worldSize: world.size)
        groups = try mesh.groups(of: world)
        self.world = world
        let pipelineRank = groups.pp.rank
        stage = try PipelineStageModule(model: model, partition: partition, pipelineRank: pipelineRank)
        executor = PipelineExecutor(stage: stage, group: groups.pp, timeline: timeline, worldRank: world.rank)

        // The embedding group: pipeline ranks 0 and pp − 1 of each pipeline, when they hold two copies.
        let tied = partition.virtualStageCount > 1 && options.stages > 1
        let isEnd = pipelineRank == 0 || pipelineRank == options.stages - 1
        embeddingGroup = try world.split(color: tied && isEnd ? mesh.groupIndex(along: .pp, of: world.rank) : -1,
                                         key: pipelineRank, name: "embedding")
        if let embeddingGroup { try embeddingGroup.broadcast(model.tokenEmbedding.weight, root: 0) }

        if zeroStage >= 1 && groups.dp.size > 1 {
            // Gradients accumulate over the micro-batches and are reduced once, after the last: nothing is
            // launched during backward.
            var options = dataParallelOptions
            options.overlapGradReduce = false
            options.overlapParamGather = false
            let distributed = try DistributedOptimizer(module: stage, group: groups.dp, stage: zeroStage, options: options,
                                                       weightDecay: weightDecay, makeOptimizer: makeShardOptimizer)
            zero = distributed
            dataParallel = nil
            optimizer = distributed.optimizer
        } else {
            zero = nil
            dataParallel = groups.dp.size > 1 ? try DataParallel(module: stage, group: groups.dp, options: dataParallelOptions, timeline: timeline) : nil
            optimizer = makeOptimizer(stage, dataParallel?.fusedGradients != nil)
        }
    }

    /// Runs one training step of this rank's instruction list and returns (the mean loss over the global batch,
    /// the gradient norm before clipping) — the same on every rank. `load` supplies micro-batch i of this rank's
    /// data-parallel slice; `maxGradientNorm` > 0 clips.
    public func trainStep(maxGradientNorm: Float, load: (Int) throws -> PipelineExecutor.MicroBatch) throws -> (loss: Double, gradientNorm: Double, peakStashed: Int) {
        var norm = 0.0
        // Gradients accumulate over all micro-batches; the reduction runs where the list says reduceGradients.
        func run() throws -> PipelineExecutor.StepReport {
            try executor.run(schedule.instructions[groups.pp.rank], width: stage.model.configuration.width, load: load,
                             reduceGradients: { norm = try reduceGradients(maxNorm: maxGradientNorm) },
                             optimizerStep: { try step() })
        }
        let report = try dataParallel?.withoutSynchronization(run) ?? run()
        let total = Tensor(shape: [1], values: [Float(report.weightedLoss)])
        try world.allReduce(total, operation: .sum)
        return (Double(total.scalarValue), norm, report.peakStashed)
    }

    /// Sums the tied embedding's gradients, reduces each stage's gradients across its replicas, and clips by the
    /// norm over the whole model; returns that norm.
    private func reduceGradients(maxNorm: Float) throws -> Double {
        if let embeddingGroup, let tied = stage.tiedEmbedding {
            // Stage 2 keeps this step's gradients in its staging buffers until they are reduce-scattered.
            if let zero, zero.stage == 2 {
                try embeddingGroup.allReduce(zero.stagedGradient(of: tied), operation: .sum)
            } else {
                if tied.grad == nil { tied.grad = Tensor.zeros(tied.shape) }
                try embeddingGroup.allReduce(tied.grad!, operation: .sum)
            }
        }
        try dataParallel?.reduceAccumulatedGradients()
        try zero?.finishBackward()
        try zero?.finishGradientSynchronization()
        // The last stage's copy of a tied weight is left out of the norm: the first stage counts it.
        let excluded: Set<ObjectIdentifier> = stage.holdsLoss && !stage.holdsInput ? Set(stage.tiedEmbedding.map { [ObjectIdentifier($0)] } ?? []) : []
        var squares: Double
        if let zero {
            squares = try zero.squaredGradientNorm(excluding: excluded)
        } else {
            let counted = GradientClipping.globalNorm(stage.parameters.filter { !excluded.contains(ObjectIdentifier($0)) })
            squares = counted * counted
        }
        // Every replica computed the same stage norm; only replica 0's joins the pipeline's sum.
        if groups.dp.rank != 0 { squares = 0 }
        let total = Tensor(shape: [1], values: [Float(squares)])
        try world.allReduce(total, operation: .sum)
        let norm = Double(total.scalarValue).squareRoot()
        let scale = Double(maxNorm) / (norm + 1e-6)
        if maxNorm > 0 && scale < 1 {
            if let zero { zero.scaleGradients(by: Float(scale)) } else { for parameter in stage.parameters { parameter.grad?.scaleInPlace(Float(scale)) } }
        }
        return norm
    }

    private func step() throws {
        if let zero {
            try zero.step()
            try zero.waitForParameters()
            zero.zeroGradients()
        } else {
            optimizer.step()
            if let dataParallel { dataParallel.zeroGradients() } else { optimizer.zeroGradients() }
        }
    }

    /// Collects the whole model on world rank 0 (collective over the world): every other pipeline stage of
    /// pipeline 0 sends the parameters it owns and rank 0 does not. Other ranks keep only their own. Undo with
    /// ``releaseCollectedModel()``.
    public func collectModel() throws {
        guard groups.dp.rank == 0, groups.pp.size > 1 else { return }
        let partition = stage.partition
        let atRoot = Set(PipelineStageModule.ownedNames(partition: partition, model: stage.model, pipelineRank: 0))
        let named = Dictionary(uniqueKeysWithValues: stage.model.namedParameters().map { ($0.name, $0.parameter) })
        if groups.pp.rank == 0 {
            stage.restoreUnownedParameters()
            for source in 1..<groups.pp.size {
                for name in PipelineStageModule.ownedNames(partition: partition, model: stage.model, pipelineRank: source) where !atRoot.contains(name) {
                    try groups.pp.receive(CommunicationBuffer(named[name]!), from: source, tag: 0)
                }
            }
        } else {
            for (name, parameter) in stage.ownedParameters where !atRoot.contains(name) {
                try withExtendedLifetime(parameter) { try groups.pp.send(CommunicationBuffer(parameter), to: 0, tag: 0) }
            }
        }
    }

    /// Gives back, on rank 0, the memory of the parameters ``collectModel()`` brought in.
    public func releaseCollectedModel() {
        if groups.dp.rank == 0 && groups.pp.rank == 0 && groups.pp.size > 1 { stage.releaseUnownedParameters() }
    }

    /// A description of the layout the optimizer state belongs to (pp, dp, partition, ZeRO); a checkpoint saved
    /// under one layout loads only under the same.
    public var layoutDescription: String {
        "pp \(mesh.pp); dp \(mesh.dp); virtual stages \(stage.partition.virtualStages); layers per virtual stage \(stage.partition.stageLayers.map(String.init).joined(separator: ",")); zero stage \(zero?.stage ?? 0)"
    }
}
