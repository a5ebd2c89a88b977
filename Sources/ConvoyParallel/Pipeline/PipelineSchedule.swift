import ConvoyTensor

/// Every pipeline rank's program for one training step, as data: an executor walks a rank's list, and
/// ``PipelineSimulator`` checks and times the lists without running a model.
///
/// A program is the rank's order of forwards and backwards, with the communication each one needs around it:
/// `receiveActivation` before `forward(mb, s)` for `s > 0`, `sendActivation` after it unless `s` is the last
/// virtual stage; `receiveGradient` before `backward(mb, s)` unless `s` is last, `sendGradient` after it for
/// `s > 0`; `loadMicroBatch` right before the forward of virtual stage 0 (inputs) and of the last virtual stage
/// (targets), ahead of any receive so the load overlaps the wait. Every program ends with `reduceGradients`,
/// `optimizerStep`.
///
/// Orders of forwards and backwards:
/// - ``PipelineScheduleKind/gpipe``: forwards of micro-batches `0 ..< m`, then backwards `0 ..< m` in the same
///   increasing order (PaddlePaddle's F-then-B).
/// - ``PipelineScheduleKind/oneForwardOneBackward``: `w = min(pp − r − 1, m)` warm-up forwards on rank `r`, then
///   `m − w` (forward, backward) pairs, then `w` cool-down backwards.
/// - ``PipelineScheduleKind/interleaved``: Megatron-Core's `forward_backward_pipelining_with_interleaving`.
///   There are `m·v` virtual micro-steps; step `k` runs micro-batch `⌊k/(pp·v)⌋·pp + k % pp` on local chunk
///   `(k % (pp·v)) / pp` forward, or local chunk `v − 1 − (k % (pp·v)) / pp` backward; local chunk `c` of rank
///   `r` is virtual stage `c·pp + r`. The warm-up is `min(2·(pp − r − 1) + (v − 1)·pp, m·v)` forwards, then
///   1F1B pairs, then the cool-down. With `v = 1` the schedule *is* 1F1B (same lists), so it accepts any `m`.
public struct PipelineSchedule: Sendable {
    /// The schedule these lists follow.
    public let kind: PipelineScheduleKind
    /// Pipeline ranks (pp).
    public let stages: Int
    /// Micro-batches per step (m, PaddlePaddle's `accumulate_steps`).
    public let microBatches: Int
    /// Model chunks per rank (v); `stages · virtualStages` virtual stages in all.
    public let virtualStages: Int
    /// Each rank's program, indexed by pipeline rank.
    public let instructions: [[PipelineInstruction]]

    /// Number of virtual stages (model chunks) in the whole pipeline: `stages · virtualStages`.
    public var virtualStageCount: Int { stages * virtualStages }

    /// Builds every rank's program.
    ///
    /// - Throws: ``ConvoyTensor/ConvoyError/invalidConfiguration(_:)`` when a count is below 1, when
    ///   `virtualStages > 1` with a schedule other than interleaved, and, for interleaved with `virtualStages > 1`,
    ///   when `stages` is 1 (chunks on one rank would only talk to themselves: use 1F1B) or `microBatches` is not
    ///   a multiple of `stages` (Megatron's micro-batch rotation needs whole groups of `pp`).
    public init(kind: PipelineScheduleKind, stages: Int, microBatches: Int, virtualStages: Int = 1) throws {
        guard stages >= 1 else {
            throw ConvoyError.invalidConfiguration("a pipeline needs at least 1 stage, got pp = \(stages); set pp ≥ 1")
        }
        guard microBatches >= 1 else {
            throw ConvoyError.invalidConfiguration(
                "a pipeline step needs at least 1 micro-batch, got accumulate_steps = \(microBatches); set it ≥ 1")
        }
        guard virtualStages >= 1 else {
            throw ConvoyError.invalidConfiguration(
                "each rank needs at least 1 model chunk, got virtual_stages = \(virtualStages); set it ≥ 1")
        }
        if virtualStages > 1 {
            guard kind == .interleaved else {
                throw ConvoyError.invalidConfiguration(
                    "virtual_stages = \(virtualStages) needs the \(PipelineScheduleKind.interleaved.rawValue) schedule, not \(kind.rawValue); set virtual_stages = 1 or schedule = \(PipelineScheduleKind.interleaved.rawValue)")
            }
            guard stages >= 2 else {
                throw ConvoyError.invalidConfiguration(
                    "\(kind.rawValue) with virtual_stages = \(virtualStages) needs pp ≥ 2, got pp = 1; use virtual_stages = 1 on a single stage")
            }
            guard microBatches % stages == 0 else {
                let lower = microBatches / stages * stages, upper = lower + stages
                let suggestion = lower > 0 ? "\(lower) or \(upper)" : "\(upper)"
                throw ConvoyError.invalidConfiguration(
                    "\(kind.rawValue) needs the number of micro-batches (accumulate_steps = \(microBatches)) to be a multiple of pp = \(stages); use \(suggestion)")
            }
        }
        self.kind = kind
        self.stages = stages
        self.microBatches = microBatches
        self.virtualStages = virtualStages
        instructions = (0..<stages).map { rank in
            Self.program(computeOrder: Self.computeOrder(kind: kind, rank: rank, stages: stages,
                                                         microBatches: microBatches, virtualStages: virtualStages),
                         stages: stages, lastStage: stages * virtualStages - 1)
        }
    }

    /// The Megatron bubble estimate (p−1)/(v·m+p−1): exact for GPipe and 1F1B with equal stage costs and free
    /// communication, approximate for interleaved (see ``PipelineSimulator`` for the real number).
    public static func bubbleFormula(stages: Int, microBatches: Int, virtualStages: Int = 1) -> Double {
        Double(stages - 1) / Double(virtualStages * microBatches + stages - 1)
    }

    /// The `forward` instructions of `rank`, in the order the rank runs them.
    public func forwardOrder(rank: Int) -> [PipelineInstruction] {
        instructions[rank].filter { if case .forward = $0 { return true } else { return false } }
    }

    /// The `backward` instructions of `rank`, in the order the rank runs them.
    public func backwardOrder(rank: Int) -> [PipelineInstruction] {
        instructions[rank].filter { if case .backward = $0 { return true } else { return false } }
    }

    /// The most (micro-batch, virtual stage) forwards whose backward has not run yet at any point of `rank`'s
    /// program: how many micro-batches' activations the rank must hold at once.
    public func peakStashedMicroBatches(rank: Int) -> Int {
        var stashed = 0, peak = 0
        for instruction in instructions[rank] {
            switch instruction {
            case .forward: stashed += 1; peak = max(peak, stashed)
            case .backward: stashed -= 1
            default: break
            }
        }
        return peak
    }

    /// The forwards and backwards of `rank`, in order, without communication.
    private static func computeOrder(kind: PipelineScheduleKind, rank: Int, stages: Int, microBatches: Int,
                                     virtualStages: Int) -> [PipelineInstruction] {
        if kind == .gpipe {
            return (0..<microBatches).map { .forward(microBatch: $0, virtualStage: rank) }
                + (0..<microBatches).map { .backward(microBatch: $0, virtualStage: rank) }
        }
        // 1F1B is interleaved with one chunk: the index formulas reduce to micro-batch k on stage `rank`. Only
        // the warm-up differs: with one chunk, pp − r − 1 forwards in flight already keep the pipeline full, and
        // Megatron's interleaved count would only stash more activations for the same bubble.
        let total = microBatches * virtualStages, group = stages * virtualStages
        let warmUp = virtualStages == 1
            ? min(stages - rank - 1, microBatches)
            : min(2 * (stages - rank - 1) + (virtualStages - 1) * stages, total)
        func microBatch(_ step: Int) -> Int { step / group * stages + step % stages }
        func chunk(_ step: Int) -> Int { step % group / stages }
        func forward(_ step: Int) -> PipelineInstruction {
            .forward(microBatch: microBatch(step), virtualStage: chunk(step) * stages + rank)
        }
        func backward(_ step: Int) -> PipelineInstruction {
            .backward(microBatch: microBatch(step), virtualStage: (virtualStages - 1 - chunk(step)) * stages + rank)
        }
        var order = (0..<warmUp).map(forward)
        order.reserveCapacity(2 * total)
        for step in 0..<(total - warmUp) {
            order.append(forward(warmUp + step))
            order.append(backward(step))
        }
        order += (total - warmUp..<total).map(backward)
        return order
    }

    /// Wraps a compute order with loads, communication and the end-of-step instructions.
    private static func program(computeOrder: [PipelineInstruction], stages: Int, lastStage: Int) -> [PipelineInstruction] {
        var program: [PipelineInstruction] = []
        program.reserveCapacity(2 * computeOrder.count + computeOrder.count / 2 + 2)
        for step in computeOrder {
            switch step {
            case .forward(let mb, let stage):
                // Stage 0 needs the inputs, the last stage the targets; with one stage in all it is one load.
                if stage == 0 || stage == lastStage { program.append(.loadMicroBatch(microBatch: mb)) }
                if stage > 0 { program.append(.receiveActivation(microBatch: mb, virtualStage: stage, from: (stage - 1) % stages)) }
                program.append(step)
                if stage < lastStage { program.append(.sendActivation(microBatch: mb, virtualStage: stage, to: (stage + 1) % stages)) }
            case .backward(let mb, let stage):
                if stage < lastStage { program.append(.receiveGradient(microBatch: mb, virtualStage: stage, from: (stage + 1) % stages)) }
                program.append(step)
                if stage > 0 { program.append(.sendGradient(microBatch: mb, virtualStage: stage, to: (stage - 1) % stages)) }
            default:
                break
            }
        }
        program += [.reduceGradients, .optimizerStep]
        return program
    }
}
