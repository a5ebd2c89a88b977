import ConvoyComm
import ConvoyNN
import ConvoyTensor
import Foundation

/// The parallel layout of a run, built from the configuration and the world before any compute: the N-D
/// ``DeviceMesh``, the features in use (checked against ``CompositionRules``), the pipeline partition, and the
/// factories of this rank's ``StepSchedule`` and ``GradientSynchronizer``. Every refusal of a parallel
/// configuration happens in ``init(settings:worldSize:model:)``, with one message saying what to change.
public struct ParallelPlan: Sendable {
    public let settings: ParallelSettings
    public let model: ModelShape
    public let mesh: DeviceMesh
    /// The features the configuration turns on.
    public let features: Set<ParallelFeature>
    /// Layers per (virtual) stage when pp > 1.
    public let partition: PipelinePartition?
    /// What `[[placement]]` sections decided (nil without them).
    public let placement: PlacementLayout?

    /// Validates `settings` for a world of `worldSize` ranks (nil: not known yet — only what does not depend on
    /// it is checked, with dp taken as given or 1) and a model of `model`'s shape.
    ///
    /// - Throws: ``ConvoyTensor/ConvoyError/invalidConfiguration(_:)`` for a world that does not fill the mesh or a
    ///   combination the rules table refuses.
    public init(settings original: ParallelSettings, worldSize: Int?, model: ModelShape) throws {
        var settings = original
        var placement: PlacementLayout?
        var explicitDP = settings.dataParallelSize != nil
        if !settings.placements.isEmpty {
            let layout = try PlacementLayout.resolve(settings.placements, model: model, worldSize: worldSize)
            if settings.pipeline.stages != 1 && settings.pipeline.stages != layout.stageRanks.count {
                throw ConvoyError.invalidConfiguration("[[placement]] makes \(layout.stageRanks.count) pipeline stages but parallel.pipeline.pp is \(settings.pipeline.stages); drop --pp or make them agree")
            }
            if let dp = settings.dataParallelSize, dp != layout.dataParallelSize {
                throw ConvoyError.invalidConfiguration("[[placement]] gives every stage \(layout.dataParallelSize) devices (dp \(layout.dataParallelSize)) but parallel.dp is \(dp); drop --dp or make them agree")
            }
            if let layers = settings.pipeline.stageLayers, layers != layout.stageLayers {
                throw ConvoyError.invalidConfiguration("[[placement]] puts \(layout.stageLayers.map(String.init).joined(separator: ",")) layers on the stages but parallel.pipeline.stage_layers is \(layers.map(String.init).joined(separator: ",")); drop one of them")
            }
            if layout.tensorParallelSize > 1 {
                guard settings.tensorParallelSize == 1 || settings.tensorParallelSize == layout.tensorParallelSize else {
                    throw ConvoyError.invalidConfiguration("[[placement]] tuples of \(layout.tensorParallelSize) devices make tp \(layout.tensorParallelSize) but parallel.tp is \(settings.tensorParallelSize); drop --tp or make them agree")
                }
                settings.tensorParallelSize = layout.tensorParallelSize
            } else if settings.tensorParallelSize > 1 {
                throw ConvoyError.invalidConfiguration("[[placement]] device groups without tuples place data-parallel replicas only, but parallel.tp is \(settings.tensorParallelSize); write each replica's tensor-parallel group as a tuple, e.g. devices = \"(cpu:0,cpu:1),(cpu:2,cpu:3)\", or drop --tp")
            }
            settings.pipeline.stages = layout.stageRanks.count
            settings.pipeline.stageLayers = layout.stageRanks.count > 1 ? layout.stageLayers : nil
            settings.dataParallelSize = layout.dataParallelSize
            explicitDP = true
            placement = layout
        }
        let pp = settings.pipeline.stages, tp = settings.tensorParallelSize
        guard pp >= 1, tp >= 1 else {
            throw ConvoyError.invalidConfiguration("pp (\(pp)) and tp (\(tp)) must be at least 1")
        }
        let dp: Int
        if let given = settings.dataParallelSize {
            dp = given
        } else if let worldSize {
            // Without --dp, the ranks that are not pipeline stages or tensor shards are data-parallel replicas.
            let others = pp * tp * settings.contextParallelSize * settings.expertParallelSize
            guard others > 0, worldSize % others == 0 else {
                throw ConvoyError.invalidConfiguration("world size \(worldSize) is not a multiple of pp·tp = \(pp)·\(tp) (dp·pp·tp ranks are needed); change --pp, --tp or the number of ranks")
            }
            dp = worldSize / others
        } else {
            dp = 1
        }
        var sizes: [MeshAxis: Int] = [.dp: dp, .pp: pp, .tp: tp]
        if settings.contextParallelSize != 1 { sizes[.cp] = settings.contextParallelSize }
        if settings.expertParallelSize != 1 { sizes[.ep] = settings.expertParallelSize }
        let mesh = try DeviceMesh(order: settings.order, sizes: sizes)
        // The rules first: a refused combination is the thing to fix, whatever the world.
        var features = Set<ParallelFeature>()
        if dp > 1 { features.insert(.dataParallel) }
        switch settings.zeroStage {
        case 0: break
        case 1: features.insert(.zero1)
        case 2: features.insert(.zero2)
        case 3: features.insert(.zero3)
        default: throw ConvoyError.invalidConfiguration("parallel.zero_stage \(settings.zeroStage) is not a ZeRO stage; use 0, 1, 2 or 3")
        }
        if pp > 1 { features.insert(.pipeline) }
        if settings.pipeline.virtualStages > 1 { features.insert(.interleavedPipeline) }
        if tp > 1 { features.insert(.tensorParallel) }
        if settings.sequenceParallel { features.insert(.sequenceParallel) }
        if mesh.size(of: .cp) > 1 { features.insert(.contextParallel) }
        if mesh.size(of: .ep) > 1 { features.insert(.expertParallel) }
        if placement != nil { features.insert(.devicePlacement) }
        if placement?.hasModelParallelGroups == true { features.insert(.modelParallelGroups) }
        if settings.dataParallel.fuseOptimizer.isEnabled(ranks: dp) { features.insert(.fusedOptimizer) }
        if settings.dataParallel.overlapGradReduce && dp > 1 { features.insert(.overlapGradReduce) }
        if settings.dataParallel.overlapParamGather { features.insert(.overlapParamGather) }
        if settings.dataParallel.findUnusedParameters { features.insert(.findUnusedParameters) }
        if settings.microBatchSize != nil { features.insert(.microBatchSize) }
        let facts = PlanFacts(settings: settings, model: model, dp: dp, pp: pp, tp: tp, dataParallelSizeIsExplicit: explicitDP, worldSizeIsKnown: worldSize != nil)
        try CompositionRules.check(features, facts: facts)
        if let worldSize {
            guard mesh.size == worldSize else {
                throw ConvoyError.invalidConfiguration("world size \(worldSize) is not dp·pp·tp = \(dp)·\(pp)·\(tp) = \(mesh.size); change --dp, --pp, --tp or the number of ranks")
            }
        }
        if let placement {
            // The placement's device lists must be the mesh's groups: stage s, replica i, tensor-parallel position j is
            // the rank at (dp i, pp s, tp j).
            for (stage, ranks) in placement.stageRanks.enumerated() {
                let expected = (0..<dp).flatMap { replica in (0..<tp).map { mesh.rank(dp: replica, pp: stage, tp: $0) } }
                guard ranks == expected else {
                    throw ConvoyError.invalidConfiguration("[[placement]] stage \(stage) is on \(ranks.map { "cpu:\($0)" }.joined(separator: ",")), but under parallel.order \(mesh.orderDescription) stage \(stage)'s replicas are \(expected.map { "cpu:\($0)" }.joined(separator: ",")); list those devices, in that order, or change parallel.order")
                }
            }
        }


        self.settings = settings
        self.model = model
        self.mesh = mesh
        self.features = features
        self.placement = placement
        partition = pp > 1 ? try settings.pipeline.partition(for: model) : nil
    }

    /// Data-parallel replicas.
    public var dataParallelSize: Int { mesh.dp }

    /// The settings of data parallelism as this plan runs them (a pipeline reduces once, after its last
    /// micro-batch, so nothing overlaps backward or the next forward).
    public var effectiveDataParallelOptions: DataParallelOptions {
        var options = settings.dataParallel
        if mesh.pp > 1 {
            options.overlapGradReduce = false
            options.overlapParamGather = false
        }
        return options
    }

    /// Builds the gradient synchronizer of `module` over `dataParallelGroup` (collective over that group): none
    /// with one replica, DDP at ZeRO stage 0, else ZeRO 1–3.
    ///
    /// - Parameters:
    ///   - makeOptimizer: the optimizer over the module's parameters (`externalGradients`: they are views into
    ///     data parallelism's fused buffer).
    ///   - makeShardOptimizer: the optimizer over ZeRO's shard slices.
    public func makeSynchronizer(module: Module, dataParallelGroup: (any ProcessGroup)?, weightDecay: Float, timeline: Timeline?,
                                 makeOptimizer: (Module, _ externalGradients: Bool) throws -> any Optimizer,
                                 makeShardOptimizer: ([ParameterGroup]) throws -> any Optimizer) throws -> any GradientSynchronizer {
        guard let group = dataParallelGroup, group.size > 1 else { return LocalGradients(module: module, optimizer: try makeOptimizer(module, false)) }
        if settings.zeroStage == 0 {
            return try DataParallelSynchronizer(module: module, group: group, options: effectiveDataParallelOptions, timeline: timeline, makeOptimizer: makeOptimizer)
        }
        return try DistributedOptimizer(module: module, group: group, stage: settings.zeroStage, options: effectiveDataParallelOptions,
                                        weightDecay: weightDecay, makeOptimizer: makeShardOptimizer)
    }

    /// Shapes `model` for this rank and builds its step schedule and synchronizer (collective over `world`;
    /// nil: one process, one rank).
    public func build(model: any LanguageModel, world: (any ProcessGroup)?, weightDecay: Float, timeline: Timeline? = nil,
                      makeOptimizer: (Module, _ externalGradients: Bool) throws -> any Optimizer,
                      makeShardOptimizer: ([ParameterGroup]) throws -> any Optimizer) throws -> ParallelRuntime {
        guard let world, world.size > 1 else {
            let schedule = AccumulationSchedule(model: model, microBatches: settings.microBatches, timeline: timeline)
            let synchronizer = try makeSynchronizer(module: model, dataParallelGroup: nil, weightDecay: weightDecay, timeline: timeline,
                                                    makeOptimizer: makeOptimizer, makeShardOptimizer: makeShardOptimizer)
            return try ParallelRuntime(schedule: schedule, synchronizer: synchronizer, mesh: mesh, world: world, parameterDType: settings.dataParallel.parameterDType)
        }
        try mesh.checkWorldSize(world.size)
        let groups = try mesh.groups(of: world)
        // Tensor parallelism cuts the parameters first: stages and synchronizers see this rank's pieces.
        let tensorParallel = mesh.tp > 1 ? try TensorParallelism(model: model, group: groups.tp, sequenceParallel: settings.sequenceParallel) : nil
        let schedule: any StepSchedule
        if mesh.pp > 1 {
            schedule = try PipelineParallel(model: model, world: world, mesh: mesh, groups: groups, options: settings.pipeline,
                                            microBatches: settings.microBatches, timeline: timeline)
        } else {
            schedule = AccumulationSchedule(model: model, microBatches: settings.microBatches, timeline: timeline, worldRank: world.rank)
        }
        let synchronizer = try makeSynchronizer(module: schedule.module, dataParallelGroup: groups.dp, weightDecay: weightDecay, timeline: timeline,
                                                makeOptimizer: makeOptimizer, makeShardOptimizer: makeShardOptimizer)
        return try ParallelRuntime(schedule: schedule, synchronizer: synchronizer, mesh: mesh, world: world, tensorParallel: tensorParallel,
                               parameterDType: settings.dataParallel.parameterDType)
    }
}
