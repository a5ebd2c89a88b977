import ConvoyComm
import ConvoyNN
import ConvoyTensor

/// What a plan knows when it checks the rules: the resolved sizes and the settings they came from.
public struct PlanFacts: Sendable {
    public var settings: ParallelSettings
    public var model: ModelShape
    /// The mesh sizes (dp resolved from the world when not given).
    public var dp: Int
    public var pp: Int
    public var tp: Int
    /// Whether dp was given (by `--dp` or placements) rather than derived from the world.
    public var dataParallelSizeIsExplicit: Bool
    /// Whether the world size is known (dp is then final even when derived).
    public var worldSizeIsKnown: Bool
}

/// One row of the composition table: a feature alone or a pair of features, and whether they compose.
public struct CompositionRule: Sendable {
    /// How a combination is judged.
    public enum Verdict: Sendable, Equatable {
        /// Composes; the text says how.
        case allowed(String)
        /// Composes when the stated condition holds (checked); the text states it.
        case conditional(String)
        /// Does not compose; the text says why and what to change.
        case refused(String)
    }

    /// One feature (a rule about it alone) or two (a rule about the pair), in table order.
    public let features: [ParallelFeature]
    public let verdict: Verdict
    /// For a conditional rule: returns the refusal (what is wrong, what to change) when the condition fails.
    let violation: @Sendable (PlanFacts) -> String?

    init(_ features: [ParallelFeature], _ verdict: Verdict, violation: @escaping @Sendable (PlanFacts) -> String? = { _ in nil }) {
        self.features = features.sorted()
        self.verdict = verdict
        self.violation = violation
    }
}

/// The one table of which parallel features compose with which (as Paddle's meta-optimizers keep white and black
/// lists). Every refusal of a parallel configuration comes from here, before any model is built; a pair the table
/// does not list composes without conditions.
public enum CompositionRules {
    public static let table: [CompositionRule] = [
        // Features alone.
        CompositionRule([.dataParallel], .allowed("replicas average gradients over the dp axis (DDP: bucketed all-reduces overlapping backward)")),
        CompositionRule([.tensorParallel], .conditional("heads, d_model and 4·d_model divide by tp (each rank holds whole heads and an equal slice of the MLP); the vocabulary is padded to a multiple of tp"), violation: { facts in
            let tp = facts.tp, model = facts.model
            for (name, value, flag) in [("heads", model.heads, "--heads"), ("d_model", model.width, "--d-model"), ("4·d_model", 4 * model.width, "--d-model")] where value % tp != 0 {
                return "tensor parallelism cuts \(name) across tp ranks, but \(name) \(value) is not divisible by tp \(tp); change --tp or \(flag)"
            }
            return nil
        }),
        CompositionRule([.sequenceParallel], .conditional("needs tp > 1 and a context length divisible by tp (each rank holds an equal slice of every sequence)"), violation: { facts in
            guard facts.tp > 1 else { return "sequence_parallel shards activations across the tensor-parallel ranks and needs tp > 1 (tp is \(facts.tp)); set --tp 2 or more, or --sequence-parallel false" }
            guard facts.model.contextLength % facts.tp == 0 else { return "sequence_parallel cuts every sequence into tp \(facts.tp) slices, but the context length \(facts.model.contextLength) is not divisible by it; change --context or --tp" }
            return nil
        }),
        CompositionRule([.contextParallel], .refused("no strategy splits sequences across ranks yet (cp > 1); leave cp at 1")),
        CompositionRule([.expertParallel], .refused("no model has experts yet (ep > 1); leave ep at 1")),
        CompositionRule([.modelParallelGroups], .conditional("each tuple of a [[placement]] device group is one data-parallel replica's tensor-parallel group: \"(cpu:0,cpu:1),(cpu:2,cpu:3)\" is 2 replicas of 2-way tp; every tuple has the same size")),
        CompositionRule([.zero1], .conditional("needs dp ≥ 2: ZeRO shards across data-parallel ranks"), violation: zeroNeedsReplicas),
        CompositionRule([.zero2], .conditional("needs dp ≥ 2: ZeRO shards across data-parallel ranks"), violation: zeroNeedsReplicas),
        CompositionRule([.zero3], .conditional("needs dp ≥ 2: ZeRO shards across data-parallel ranks"), violation: zeroNeedsReplicas),
        CompositionRule([.pipeline], .conditional("the model's layers cut into the stages (at least one layer per virtual stage) and the schedule fits the micro-batches"), violation: { facts in
            do {
                _ = try facts.settings.pipeline.partition(for: facts.model)
                _ = try PipelineSchedule(kind: facts.settings.pipeline.schedule, stages: facts.pp, microBatches: facts.settings.microBatches,
                                         virtualStages: facts.settings.pipeline.virtualStages)
                return nil
            } catch { return Self.message(of: error) }
        }),
        CompositionRule([.interleavedPipeline], .conditional("needs pp > 1 and schedule interleaved-1f1b"), violation: { facts in
            guard facts.pp > 1, facts.settings.pipeline.schedule == .interleaved else {
                return "parallel.pipeline.virtual_stages \(facts.settings.pipeline.virtualStages) needs pp > 1 and schedule = \"interleaved-1f1b\" (pp is \(facts.pp), schedule \(facts.settings.pipeline.schedule.rawValue)); set --virtual-stages 1 or use an interleaved pipeline"
            }
            return nil
        }),
        CompositionRule([.microBatchSize], .conditional("micro_batch_size × micro-batches × dp = the global batch"), violation: { facts in
            guard let size = facts.settings.microBatchSize, let batch = facts.settings.globalBatch, facts.dataParallelSizeIsExplicit || facts.worldSizeIsKnown else { return nil }
            let micro = facts.settings.microBatches
            let (product, overflow) = size.multipliedReportingOverflow(by: micro * facts.dp)
            guard overflow || product != batch else { return nil }
            return "micro_batch_size \(size) × accumulate_steps \(micro) × dp \(facts.dp) = \(overflow ? "an overflowing number" : String(product)) is not the global batch \(batch); change --micro-batch-size, --accumulate-steps or --batch"
        }),
        CompositionRule([.devicePlacement], .conditional("every device exists in the world and is placed once; every module is covered (embeddings follow the first layer, the final norm and head the last)")),
        CompositionRule([.overlapParamGather], .allowed("ZeRO stages 1–2 leave parameter all-gathers in flight until each layer's forward; stage 3 prefetches the next layer; without ZeRO nothing is gathered")),
        CompositionRule([.fusedOptimizer], .allowed("the optimizer's fused kernels run over flat segments (in place over ZeRO's shard slices)")),
        CompositionRule([.findUnusedParameters], .allowed("a parameter without a gradient gets a zero one; one no rank used keeps none")),
        // Pairs.
        CompositionRule([.dataParallel, .pipeline], .allowed("each stage's replicas form a dp group that reduces the stage's gradients after the last micro-batch; the tied embedding is summed across the first and last stage first")),
        CompositionRule([.zero1, .pipeline], .conditional("gradients are reduce-scattered once after the last micro-batch (overlap_grad_reduce and overlap_param_gather are turned off)")),
        CompositionRule([.zero2, .pipeline], .conditional("staged gradients accumulate over the micro-batches and are reduce-scattered once after the last (overlaps turned off)")),
        CompositionRule([.zero3, .pipeline], .refused("parallel.zero_stage 3 does not combine with pipeline parallelism: stage 3 gathers each layer for every forward and backward, and a pipeline interleaves those of many micro-batches; use --zero-stage 0, 1 or 2 (zero_stage 1 or 2 with pp > 1)")),
        CompositionRule([.zero3, .interleavedPipeline], .refused("parallel.zero_stage 3 does not combine with an interleaved pipeline; use zero_stage 1 or 2")),
        CompositionRule([.overlapGradReduce, .pipeline], .conditional("turned off: a pipeline reduces once, after its last micro-batch")),
        CompositionRule([.overlapParamGather, .pipeline], .conditional("turned off: the optimizer step waits for its gathers before the next step's schedule starts")),
        CompositionRule([.fusedOptimizer, .zero1], .allowed("fused kernels update the shard slices in place in the parameter buffer")),
        CompositionRule([.fusedOptimizer, .zero2], .allowed("fused kernels update the shard slices in place in the parameter buffer")),
        CompositionRule([.fusedOptimizer, .zero3], .allowed("fused kernels update the parameter shard in place")),
        CompositionRule([.findUnusedParameters, .pipeline], .allowed("a stage reduces whatever gradients its micro-batches produced")),
        CompositionRule([.devicePlacement, .pipeline], .conditional("each distinct device group is one stage, in module order; every stage has the same number of devices (one dp degree for all stages)")),
        CompositionRule([.devicePlacement, .dataParallel], .allowed("the devices of a group are the data-parallel replicas of what it holds")),
        CompositionRule([.devicePlacement, .tensorParallel], .conditional("the tensor-parallel groups are the device groups' tuples (tp = the tuple size; --tp must agree)")),
        CompositionRule([.tensorParallel, .pipeline], .allowed("each stage's tensor-parallel ranks cut its layers; whole activations cross stage boundaries; the tied vocabulary-sharded embedding's pieces are summed across the first and last stage piece by piece")),
        CompositionRule([.tensorParallel, .dataParallel], .allowed("each tensor-parallel piece is averaged across its data-parallel replicas (the dp groups hold ranks with the same tp position)")),
        CompositionRule([.tensorParallel, .zero3], .allowed("stage 3 shards each rank's tensor-parallel pieces across its data-parallel replicas and gathers them layer by layer over dp; exports gather over dp first, then assemble the pieces over tp")),
        CompositionRule([.sequenceParallel, .pipeline], .refused("sequence parallelism with a pipeline is not supported yet: stage boundaries send whole activations; use --sequence-parallel false with --pp")),
    ]

    private static func zeroNeedsReplicas(_ facts: PlanFacts) -> String? {
        guard facts.dataParallelSizeIsExplicit, facts.dp < 2 else { return nil }
        return "parallel.zero_stage \(facts.settings.zeroStage) shards state across data-parallel ranks and needs --dp 2 or more (dp is \(facts.dp))"
    }

    /// The text of a configuration error without its "invalid configuration: " prefix (for nesting in another message).
    public static func message(of error: Error) -> String {
        if case ConvoyError.invalidConfiguration(let text) = error { return text }
        return "\(error)"
    }

    /// The rule for `features` (one or two), or nil when the table does not list it (it composes).
    public static func rule(for features: [ParallelFeature]) -> CompositionRule? {
        let key = features.sorted()
        return table.first { $0.features == key }
    }

    /// Checks every feature alone and every pair of `features` against the table; throws the first refusal
    /// (refused pairs first, as the more specific, then refused features; refusals before conditions, since a
    /// refused combination makes its conditions moot), else the first failed condition, in table order.
    public static func check(_ features: Set<ParallelFeature>, facts: PlanFacts) throws {
        let applicable = table.filter { $0.features.allSatisfy(features.contains) }
        for rule in applicable.filter({ $0.features.count == 2 }) + applicable.filter({ $0.features.count == 1 }) {
            guard case .refused(let reason) = rule.verdict else { continue }
            let names = rule.features.map(\.meaning).joined(separator: " with ")
            throw ConvoyError.invalidConfiguration(rule.features.count == 1 ? reason : "\(names) is refused: \(reason)")
        }
        for rule in applicable {
            if case .conditional = rule.verdict, let violation = rule.violation(facts) { throw ConvoyError.invalidConfiguration(violation) }
        }
    }
}
