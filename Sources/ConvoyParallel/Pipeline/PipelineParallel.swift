import ConvoyComm
import ConvoyNN
import ConvoyTensor

/// Pipeline parallelism as a ``StepSchedule`` (PaddlePaddle's pipeline meta-optimizer): the world is a mesh
/// whose pp axis cuts the model into stages; each pipeline runs a ``PipelineSchedule`` over its stages with
/// ``PipelineExecutor``, and each stage's replicas (the dp axis) reduce the stage's gradients through whatever
/// ``GradientSynchronizer`` the plan gave them, after the last micro-batch.
///
/// The tied weight (GPT's token embedding) lives on the first stage (input) and the last (head); both copies
/// start equal (same seed, then broadcast within the embedding group of those two ranks) and their gradients
/// are summed across that group every step before the data-parallel reduction, so the tie stays exact. The
/// last stage's copy is marked as not the primary one (``ConvoyTensor/TensorPlacement/isPrimaryCopy``), so norms
/// count the weight once.
public final class PipelineParallel: StepSchedule {
    public let mesh: DeviceMesh
    public let groups: MeshGroups
    /// The first and last stage of this rank's pipeline (nil when this rank is neither, or they are one rank).
    public let embeddingGroup: (any ProcessGroup)?
    public let stage: PipelineStageModule
    public let schedule: PipelineSchedule
    public let executor: PipelineExecutor
    /// The synchronizer built by the convenience initializer (nil when a plan passes one to ``run``).
    public private(set) var synchronizer: (any GradientSynchronizer)?
    private let world: any ProcessGroup

    /// Builds this rank's stage of `model` (collective over `world`: every rank calls it with the same
    /// arguments). `groups` are this rank's groups along `mesh`'s axes.
    public init(model: any LanguageModel, world: any ProcessGroup, mesh: DeviceMesh, groups: MeshGroups, options: PipelineOptions,
                microBatches: Int, timeline: Timeline? = nil) throws {
        let partition = try options.partition(for: model.shape)
        schedule = try PipelineSchedule(kind: options.schedule, stages: options.stages, microBatches: microBatches, virtualStages: options.virtualStages)
        self.mesh = mesh
        self.groups = groups
        self.world = world
        let pipelineRank = groups.pp.rank
        stage = try PipelineStageModule(model: model, partition: partition, pipelineRank: pipelineRank)
        executor = PipelineExecutor(stage: stage, group: groups.pp, timeline: timeline, worldRank: world.rank)

        // The embedding group: pipeline ranks 0 and pp − 1 of each pipeline, when they hold two copies.
        let tied = partition.virtualStageCount > 1 && options.stages > 1 && model.tiedWeight != nil
        let isEnd = pipelineRank == 0 || pipelineRank == options.stages - 1
        embeddingGroup = try world.split(color: tied && isEnd ? mesh.groupIndex(along: .pp, of: world.rank) : -1,
                                         key: pipelineRank, name: "embedding")
        if let embeddingGroup, let weight = model.tiedWeight {
            try embeddingGroup.broadcast(weight, root: 0)
            weight.placement.sharedAs = "tied input/output weight"
            weight.placement.isPrimaryCopy = stage.holdsInput
        }
    }

    /// Builds the mesh (pp × dp over `world`), this rank's stage and its gradient synchronizer — DDP or ZeRO
    /// stage 1 or 2 across the stage's replicas — as a parallel plan would (collective over `world`).
    ///
    /// - Parameters:
    ///   - makeOptimizer: builds the optimizer over the stage's parameters (`externalGradients`: data
    ///     parallelism owns a fused gradient buffer).
    ///   - makeShardOptimizer: builds the optimizer over ZeRO shard slices.
    /// - Throws: ``ConvoyTensor/ConvoyError/invalidConfiguration(_:)`` for what the plan's rules refuse (a world
    ///   that is not pp·dp, ZeRO stage 3), or a partition/schedule that does not fit.
    public convenience init(model: any LanguageModel, world: any ProcessGroup, options: PipelineOptions, microBatches: Int, zeroStage: Int = 0,
                            dataParallelOptions: DataParallelOptions = DataParallelOptions(), weightDecay: Float, timeline: Timeline? = nil,
                            makeOptimizer: (Module, _ externalGradients: Bool) throws -> any Optimizer,
                            makeShardOptimizer: ([ParameterGroup]) throws -> any Optimizer) throws {
        var settings = ParallelSettings()
        settings.pipeline = options
        settings.zeroStage = zeroStage
        settings.dataParallel = dataParallelOptions
        settings.microBatches = microBatches
        let plan = try ParallelPlan(settings: settings, worldSize: world.size, model: model.shape)
        let groups = try plan.mesh.groups(of: world)
        try self.init(model: model, world: world, mesh: plan.mesh, groups: groups, options: options, microBatches: microBatches, timeline: timeline)
        synchronizer = try plan.makeSynchronizer(module: stage, dataParallelGroup: groups.dp, weightDecay: weightDecay, timeline: timeline,
                                                 makeOptimizer: makeOptimizer, makeShardOptimizer: makeShardOptimizer)
    }

    /// The optimizer over this rank's parameters (its shard under ZeRO), from the convenience initializer.
    public var optimizer: any Optimizer { synchronizer!.optimizer }

    /// Runs one training step with the synchronizer of the convenience initializer and returns (the mean loss
    /// over the global batch, the gradient norm before clipping, the peak stash) — the same on every rank.
    /// `maxGradientNorm` > 0 clips.
    public func trainStep(maxGradientNorm: Float, load: (Int) throws -> MicroBatch) throws -> (loss: Double, gradientNorm: Double, peakStashed: Int) {
        let runtime = try ParallelRuntime(schedule: self, synchronizer: synchronizer!, mesh: mesh, world: world)
        let result = try runtime.trainStep(maxGradientNorm: maxGradientNorm, load: load)
        return (result.loss, result.gradientNorm, result.peakStashed)
    }

    public var microBatches: Int { schedule.microBatches }
    public var module: Module { stage }
    public var summary: String {
        "pipeline of \(mesh.pp) stages (layers \(stage.partition.stageLayers.map(String.init).joined(separator: "/"))), \(schedule.kind.rawValue), \(schedule.microBatches) micro-batches, \(mesh.dp) replicas"
    }

    public func run(load: (Int) throws -> MicroBatch, synchronizer: any GradientSynchronizer,
                    reduceGradients: () throws -> Void, optimizerStep: () throws -> Void) throws -> (weightedLoss: Double, peakStashed: Int) {
        var report = PipelineExecutor.StepReport(weightedLoss: 0, peakStashed: 0)
        // Gradients accumulate over all micro-batches; the reduction runs where the list says reduceGradients.
        try synchronizer.backward(synchronizing: false) {
            report = try executor.run(schedule.instructions[groups.pp.rank], width: stage.model.shape.width, load: load,
                                      reduceGradients: {
                                          // The tied weight's copies first sum their gradients, so each is the whole weight's.
                                          if let embeddingGroup, let tied = stage.tiedEmbedding {
                                              try embeddingGroup.allReduce(synchronizer.accumulatedGradient(of: tied), operation: .sum)
                                          }
                                          try synchronizer.finishBackward()
                                          try reduceGradients()
                                      },
                                      optimizerStep: optimizerStep)
        }
        return (report.weightedLoss, report.peakStashed)
    }

    public func gatherFullModel() throws { try collectModel() }
    public func releaseFullModel() { releaseCollectedModel() }

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
}
