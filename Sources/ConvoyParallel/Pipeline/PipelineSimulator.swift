import ConvoyTensor

/// Runs pipeline programs against a cost model without a model: it times every instruction, finds deadlocks,
/// and checks that the programs compute a correct step.
///
/// Semantics: each rank runs its list in order on its own clock. A compute instruction or a send occupies the
/// rank for its cost; a send's message is available `messageLatency` after the send ends; a receive starts at
/// the later of the rank's clock and its message's arrival, then takes `receiveCost`. Messages match on
/// (sender, receiver, tag, micro-batch), see ``PipelineInstruction``.
///
/// The simulation is event-driven: a rank runs until it reaches a receive whose message has not been posted and
/// parks there; posting that message wakes it. Times do not depend on the order ranks are woken, and the work is
/// linear in the number of instructions (pp = 64, m = 512 1F1B, about 200k instructions, takes about a tenth of a
/// second in a release build).
///
/// Checks (each failure is a ``ConvoyTensor/ConvoyError/invalidConfiguration(_:)`` naming the rank, the
/// instruction's position and the instruction):
/// - every `forward(mb, s)` and `backward(mb, s)` runs exactly once, on rank `s % pp`, the backward after the
///   forward; each needs its input first (a load on the first and last virtual stage, a received activation for
///   `s > 0`, a received gradient unless `s` is last);
/// - sends and receives name the rank that holds the neighbouring virtual stage; an activation is sent after its
///   forward, a gradient after its backward; every message is sent once and received once;
/// - `reduceGradients` comes after all of the rank's backwards;
/// - no rank stays blocked: a deadlock names every blocked rank, the receive it waits on and why the message
///   never comes.
public struct PipelineSimulator: Sendable {
    /// The durations the simulation uses.
    public var costModel: PipelineCostModel

    /// A simulator with the given costs (default: forward 1, backward 2, free communication).
    public init(costModel: PipelineCostModel = .uniform()) {
        self.costModel = costModel
    }

    /// Simulates a schedule's programs.
    public func simulate(_ schedule: PipelineSchedule) throws -> PipelineSimulation {
        try simulate(instructions: schedule.instructions, microBatches: schedule.microBatches,
                     virtualStages: schedule.virtualStages)
    }

    /// Simulates one program per rank (`instructions[r]` is rank `r`'s), for `microBatches` micro-batches and
    /// `virtualStages` model chunks per rank.
    public func simulate(instructions: [[PipelineInstruction]], microBatches: Int, virtualStages: Int = 1) throws -> PipelineSimulation {
        let ranks = instructions.count
        guard ranks >= 1, microBatches >= 1, virtualStages >= 1 else {
            throw ConvoyError.invalidConfiguration(
                "a simulation needs ≥ 1 rank, micro-batch and virtual stage; got \(ranks), \(microBatches), \(virtualStages)")
        }
        try costModel.validate(virtualStageCount: ranks * virtualStages)
        var state = State(ranks: ranks, microBatches: microBatches, stageCount: ranks * virtualStages)
        var runnable = Array((0..<ranks).reversed())
        while let rank = runnable.popLast() {
            try run(rank: rank, program: instructions[rank], state: &state, runnable: &runnable)
        }
        try state.checkComplete(instructions: instructions)
        let spans = state.spans
        var computeEnd = 0.0
        for rankSpans in spans {
            if let last = rankSpans.last(where: { if case .backward = $0.instruction { true } else { false } }) {
                computeEnd = max(computeEnd, last.end)
            }
        }
        return PipelineSimulation(spans: spans, makespan: state.clock.max() ?? 0, computeEnd: computeEnd,
                                  busyTime: state.busy, peakStashedMicroBatches: state.peakStash)
    }

    /// Runs `rank` from its cursor until it finishes or parks on a receive whose message is not posted yet.
    private func run(rank: Int, program: [PipelineInstruction], state: inout State, runnable: inout [Int]) throws {
        let ranks = state.ranks, lastStage = state.stageCount - 1
        while state.cursor[rank] < program.count {
            let position = state.cursor[rank], instruction = program[position]
            func fail(_ reason: String) -> ConvoyError {
                ConvoyError.invalidConfiguration("pipeline schedule: rank \(rank), instruction #\(position) \(instruction): \(reason)")
            }
            /// Index of (mb, stage) in the flat arrays, after checking both are in range and `rank` holds `stage`.
            func slot(_ mb: Int, _ stage: Int) throws -> Int {
                guard (0..<state.microBatches).contains(mb) else { throw fail("micro-batch out of 0..<\(state.microBatches)") }
                guard (0..<state.stageCount).contains(stage) else { throw fail("virtual stage out of 0..<\(state.stageCount)") }
                guard stage % ranks == rank else { throw fail("virtual stage \(stage) lives on rank \(stage % ranks)") }
                return mb * state.stageCount + stage
            }
            var start = state.clock[rank]
            let duration: Double
            switch instruction {
            case .loadMicroBatch(let mb):
                guard (0..<state.microBatches).contains(mb) else { throw fail("micro-batch out of 0..<\(state.microBatches)") }
                state.loaded[rank * state.microBatches + mb] = true
                duration = costModel.loadCost
            case .forward(let mb, let stage):
                let index = try slot(mb, stage)
                guard !state.forwarded[index] else { throw fail("runs a second time") }
                if stage == 0 || stage == lastStage, !state.loaded[rank * state.microBatches + mb] {
                    throw fail("the micro-batch was not loaded on this rank first")
                }
                guard stage == 0 || state.activationIn[index] else { throw fail("its input activation was not received first") }
                state.forwarded[index] = true
                state.stash[rank] += 1
                state.peakStash[rank] = max(state.peakStash[rank], state.stash[rank])
                duration = costModel.forwardCost(virtualStage: stage)
                state.busy[rank] += duration
            case .backward(let mb, let stage):
                let index = try slot(mb, stage)
                guard state.forwarded[index] else { throw fail("runs before its forward") }
                guard !state.backwarded[index] else { throw fail("runs a second time") }
                guard stage == lastStage || state.gradientIn[index] else { throw fail("its output gradient was not received first") }
                state.backwarded[index] = true
                state.stash[rank] -= 1
                state.backwardCount[rank] += 1
                duration = costModel.backwardCost(virtualStage: stage)
                state.busy[rank] += duration
            case .sendActivation(let mb, let stage, let to), .sendGradient(let mb, let stage, let to):
                let index = try slot(mb, stage)
                let isGradient = if case .sendGradient = instruction { true } else { false }
                let neighbour = isGradient ? stage - 1 : stage + 1
                guard (0..<state.stageCount).contains(neighbour) else { throw fail("virtual stage \(stage) has no neighbour to send to") }
                guard to == neighbour % ranks else { throw fail("virtual stage \(neighbour) lives on rank \(neighbour % ranks), not \(to)") }
                guard isGradient ? state.backwarded[index] : state.forwarded[index] else {
                    throw fail("sends before the \(isGradient ? "backward" : "forward") that computes it")
                }
                let key = MessageKey(source: rank, destination: to, tag: instruction.messageTag!, microBatch: mb)
                guard state.sent.insert(key).inserted else { throw fail("sends the same message a second time") }
                duration = costModel.sendCost
                state.posted[key] = start + duration + costModel.messageLatency
                if let waiter = state.waiting.removeValue(forKey: key) { runnable.append(waiter) }
            case .receiveActivation(let mb, let stage, let from), .receiveGradient(let mb, let stage, let from):
                let index = try slot(mb, stage)
                let isGradient = if case .receiveGradient = instruction { true } else { false }
                let neighbour = isGradient ? stage + 1 : stage - 1
                guard (0..<state.stageCount).contains(neighbour) else { throw fail("virtual stage \(stage) has no neighbour to receive from") }
                guard from == neighbour % ranks else { throw fail("virtual stage \(neighbour) lives on rank \(neighbour % ranks), not \(from)") }
                let key = MessageKey(source: from, destination: rank, tag: instruction.messageTag!, microBatch: mb)
                guard let arrival = state.posted.removeValue(forKey: key) else {
                    state.waiting[key] = rank  // parked; the matching send wakes this rank
                    return
                }
                if isGradient { state.gradientIn[index] = true } else { state.activationIn[index] = true }
                start = max(start, arrival)
                duration = costModel.receiveCost
            case .reduceGradients:
                let expected = state.microBatches * state.stageCount / ranks
                guard state.backwardCount[rank] == expected else {
                    throw fail("reduces gradients after \(state.backwardCount[rank]) of the rank's \(expected) backwards")
                }
                duration = costModel.reduceGradientsCost
            case .optimizerStep:
                duration = costModel.optimizerStepCost
            }
            state.spans[rank].append(PipelineSimulation.Span(instruction: instruction, start: start, end: start + duration))
            state.clock[rank] = start + duration
            state.cursor[rank] = position + 1
        }
    }

    /// A point-to-point message's identity.
    private struct MessageKey: Hashable {
        let source: Int, destination: Int, tag: Int, microBatch: Int
    }

    /// Everything the simulation tracks; per (micro-batch, virtual stage) flags are flat arrays indexed
    /// `mb · stageCount + stage`, since each pair belongs to one rank.
    private struct State {
        let ranks: Int, microBatches: Int, stageCount: Int
        var clock: [Double], cursor: [Int], busy: [Double], stash: [Int], peakStash: [Int], backwardCount: [Int]
        var spans: [[PipelineSimulation.Span]]
        var loaded: [Bool]
        var forwarded: [Bool], backwarded: [Bool], activationIn: [Bool], gradientIn: [Bool]
        /// Messages sent and not yet received, with their arrival time.
        var posted: [MessageKey: Double] = [:]
        /// Every message ever sent, to refuse duplicates.
        var sent: Set<MessageKey> = []
        /// The rank parked on each message.
        var waiting: [MessageKey: Int] = [:]

        init(ranks: Int, microBatches: Int, stageCount: Int) {
            (self.ranks, self.microBatches, self.stageCount) = (ranks, microBatches, stageCount)
            clock = Array(repeating: 0, count: ranks)
            busy = clock
            cursor = Array(repeating: 0, count: ranks)
            (stash, peakStash, backwardCount) = (cursor, cursor, cursor)
            spans = Array(repeating: [], count: ranks)
            loaded = Array(repeating: false, count: ranks * microBatches)
            forwarded = Array(repeating: false, count: microBatches * stageCount)
            (backwarded, activationIn, gradientIn) = (forwarded, forwarded, forwarded)
        }

        /// After the worklist is empty: refuses blocked ranks, missing work and unreceived messages.
        func checkComplete(instructions: [[PipelineInstruction]]) throws {
            let blocked = (0..<ranks).filter { cursor[$0] < instructions[$0].count }
            if !blocked.isEmpty {
                let lines = blocked.map { rank -> String in
                    let position = cursor[rank], instruction = instructions[rank][position]
                    let sender = instruction.peer!
                    let key = (waiting.first { $0.value == rank })!.key
                    let sendPosition = instructions[sender].indices.first { index in
                        let candidate = instructions[sender][index]
                        guard let tag = candidate.messageTag, candidate.peer == rank, tag == key.tag else { return false }
                        switch candidate {
                        case .sendActivation(let mb, _, _), .sendGradient(let mb, _, _): return mb == key.microBatch
                        default: return false
                        }
                    }
                    let why = if let sendPosition {
                        "rank \(sender) sends it at #\(sendPosition) but is blocked at #\(cursor[sender]) \(instructions[sender][cursor[sender]])"
                    } else {
                        "rank \(sender) never sends it"
                    }
                    return "rank \(rank) waits at #\(position) \(instruction) (\(why))"
                }
                throw ConvoyError.invalidConfiguration("pipeline schedule deadlocks: " + lines.joined(separator: "; "))
            }
            if let key = posted.keys.min(by: { ($0.source, $0.destination, $0.tag, $0.microBatch) < ($1.source, $1.destination, $1.tag, $1.microBatch) }) {
                throw ConvoyError.invalidConfiguration(
                    "pipeline schedule: rank \(key.source) sends micro-batch \(key.microBatch) with tag \(key.tag) to rank \(key.destination), which never receives it (\(posted.count) unreceived message(s))")
            }
            for mb in 0..<microBatches {
                for stage in 0..<stageCount where !backwarded[mb * stageCount + stage] {
                    let what = forwarded[mb * stageCount + stage] ? "backward" : "forward"
                    throw ConvoyError.invalidConfiguration(
                        "pipeline schedule: rank \(stage % ranks) never runs the \(what) of micro-batch \(mb) on virtual stage \(stage)")
                }
            }
        }
    }
}
