import ConvoyParallel
import ConvoyTensor
import Testing

/// One schedule to build: kind, pp, m, v.
struct PipelineScheduleCase: Sendable, CustomStringConvertible {
    let kind: PipelineScheduleKind
    let stages: Int
    let microBatches: Int
    let virtualStages: Int

    var description: String { "\(kind.rawValue) pp \(stages) m \(microBatches) v \(virtualStages)" }

    func schedule() throws -> PipelineSchedule {
        try PipelineSchedule(kind: kind, stages: stages, microBatches: microBatches, virtualStages: virtualStages)
    }

    /// Every valid configuration of the test grid: pp ∈ {1, 2, 3, 4, 8}, m ∈ {1, 2, 3, 4, 8, 16}, v ∈ {1, 2, 3}
    /// for interleaved (which needs pp ≥ 2 and m a multiple of pp when v > 1).
    static let grid: [PipelineScheduleCase] = {
        var configurations: [PipelineScheduleCase] = []
        for stages in [1, 2, 3, 4, 8] {
            for microBatches in [1, 2, 3, 4, 8, 16] {
                configurations.append(.init(kind: .gpipe, stages: stages, microBatches: microBatches, virtualStages: 1))
                configurations.append(.init(kind: .oneForwardOneBackward, stages: stages, microBatches: microBatches, virtualStages: 1))
                for virtualStages in [1, 2, 3] where virtualStages == 1 || (stages >= 2 && microBatches % stages == 0) {
                    configurations.append(.init(kind: .interleaved, stages: stages, microBatches: microBatches, virtualStages: virtualStages))
                }
            }
        }
        return configurations
    }()
}

/// A message as both sides name it: (sender, receiver, tag, micro-batch).
private struct Message: Hashable {
    let source: Int, destination: Int, tag: Int, microBatch: Int
}

@Suite struct PipelineScheduleTests {
    @Test func parsesScheduleNames() throws {
        #expect(try PipelineScheduleKind(parsing: "GPipe") == .gpipe)
        #expect(try PipelineScheduleKind(parsing: "F-then-B") == .gpipe)
        #expect(try PipelineScheduleKind(parsing: "1F1B") == .oneForwardOneBackward)
        #expect(try PipelineScheduleKind(parsing: "Interleaved") == .interleaved)
        #expect(try PipelineScheduleKind(parsing: "interleaved-1F1B") == .interleaved)
        for kind in PipelineScheduleKind.allCases { #expect(try PipelineScheduleKind(parsing: kind.rawValue) == kind) }
        let error = #expect(throws: ConvoyError.self) { try PipelineScheduleKind(parsing: "zero-bubble") }
        #expect(error.map { "\($0)" }?.contains("zero-bubble") == true)
        #expect(error.map { "\($0)" }?.contains("interleaved-1f1b") == true)
    }

    @Test func messageTagsNameTheBoundary() {
        let send = PipelineInstruction.sendActivation(microBatch: 0, virtualStage: 2, to: 3)
        let receive = PipelineInstruction.receiveActivation(microBatch: 0, virtualStage: 3, from: 2)
        #expect(send.messageTag == 4 && receive.messageTag == 4)
        let sendBack = PipelineInstruction.sendGradient(microBatch: 0, virtualStage: 3, to: 2)
        let receiveBack = PipelineInstruction.receiveGradient(microBatch: 0, virtualStage: 2, from: 3)
        #expect(sendBack.messageTag == 5 && receiveBack.messageTag == 5)
        #expect(PipelineInstruction.forward(microBatch: 0, virtualStage: 0).messageTag == nil)
    }

    /// Checks the lists without the simulator: ownership, once-only compute, forward before backward, loads,
    /// one-to-one message matching, FIFO order per (sender, receiver, tag).
    @Test(arguments: PipelineScheduleCase.grid)
    func programsAreWellFormed(_ configuration: PipelineScheduleCase) throws {
        let schedule = try configuration.schedule()
        let pp = configuration.stages, m = configuration.microBatches, stageCount = pp * configuration.virtualStages
        #expect(schedule.instructions.count == pp)
        var forwards = Set<[Int]>(), backwards = Set<[Int]>()
        var sends: [Message: Int] = [:], receives: [Message: Int] = [:]
        var sendOrder: [[Int]: [Int]] = [:], receiveOrder: [[Int]: [Int]] = [:]
        for (rank, program) in schedule.instructions.enumerated() {
            var forwarded = Set<[Int]>(), loads = 0
            #expect(Array(program.suffix(2)) == [.reduceGradients, .optimizerStep])
            for instruction in program {
                switch instruction {
                case .loadMicroBatch: loads += 1
                case .forward(let mb, let stage):
                    #expect(stage % pp == rank)
                    #expect(forwards.insert([mb, stage]).inserted, "forward \(mb), \(stage) twice")
                    forwarded.insert([mb, stage])
                case .backward(let mb, let stage):
                    #expect(forwarded.contains([mb, stage]), "backward \(mb), \(stage) before its forward on rank \(rank)")
                    #expect(backwards.insert([mb, stage]).inserted, "backward \(mb), \(stage) twice")
                case .sendActivation(let mb, _, let to), .sendGradient(let mb, _, let to):
                    let message = Message(source: rank, destination: to, tag: instruction.messageTag!, microBatch: mb)
                    sends[message, default: 0] += 1
                    sendOrder[[rank, to, message.tag], default: []].append(mb)
                case .receiveActivation(let mb, _, let from), .receiveGradient(let mb, _, let from):
                    let message = Message(source: from, destination: rank, tag: instruction.messageTag!, microBatch: mb)
                    receives[message, default: 0] += 1
                    receiveOrder[[from, rank, message.tag], default: []].append(mb)
                case .reduceGradients, .optimizerStep: break
                }
            }
            let expectedLoads = (rank == 0 ? m : 0) + (rank == (stageCount - 1) % pp && pp > 1 ? m : 0)
            #expect(loads == expectedLoads, "rank \(rank) loads")
        }
        #expect(forwards.count == m * stageCount)
        #expect(backwards.count == m * stageCount)
        #expect(sends == receives)
        #expect(sends.values.allSatisfy { $0 == 1 })
        #expect(sends.count == 2 * m * (stageCount - 1))
        #expect(sendOrder == receiveOrder)
        #expect(sendOrder.values.allSatisfy { $0 == $0.sorted() }, "messages of one (pair, tag) go in micro-batch order")
    }

    @Test(arguments: PipelineScheduleCase.grid)
    func stashBoundsHold(_ configuration: PipelineScheduleCase) throws {
        let schedule = try configuration.schedule()
        let pp = configuration.stages, m = configuration.microBatches, v = configuration.virtualStages
        for rank in 0..<pp {
            let peak = schedule.peakStashedMicroBatches(rank: rank)
            switch (configuration.kind, v) {
            case (.gpipe, _):
                #expect(peak == m)
            case (.oneForwardOneBackward, _), (.interleaved, 1):
                #expect(peak == min(pp - rank, m), "rank \(rank)")
                #expect(peak <= pp)
            case (.interleaved, _):
                // Megatron's warm-up plus the one forward each steady step runs before its backward.
                let warmUp = min(2 * (pp - rank - 1) + (v - 1) * pp, m * v)
                #expect(peak == min(warmUp + 1, m * v), "rank \(rank)")
            }
        }
    }

    @Test func interleavedWithOneChunkIsOneForwardOneBackward() throws {
        for (pp, m) in [(1, 3), (3, 5), (4, 8)] {
            let interleaved = try PipelineSchedule(kind: .interleaved, stages: pp, microBatches: m, virtualStages: 1)
            let plain = try PipelineSchedule(kind: .oneForwardOneBackward, stages: pp, microBatches: m)
            #expect(interleaved.instructions == plain.instructions)
        }
    }

    @Test func ordersFollowTheSchedules() throws {
        let gpipe = try PipelineSchedule(kind: .gpipe, stages: 2, microBatches: 3)
        #expect(gpipe.forwardOrder(rank: 1) == (0..<3).map { .forward(microBatch: $0, virtualStage: 1) })
        #expect(gpipe.backwardOrder(rank: 1) == (0..<3).map { .backward(microBatch: $0, virtualStage: 1) })
        #expect(gpipe.instructions[1].prefix(4) == [.loadMicroBatch(microBatch: 0), .receiveActivation(microBatch: 0, virtualStage: 1, from: 0),
                                                    .forward(microBatch: 0, virtualStage: 1), .loadMicroBatch(microBatch: 1)])

        let oneF1B = try PipelineSchedule(kind: .oneForwardOneBackward, stages: 4, microBatches: 8)
        let rank1 = oneF1B.instructions[1].filter { if case .forward = $0 { true } else if case .backward = $0 { true } else { false } }
        #expect(rank1.prefix(5) == [.forward(microBatch: 0, virtualStage: 1), .forward(microBatch: 1, virtualStage: 1),
                                    .forward(microBatch: 2, virtualStage: 1), .backward(microBatch: 0, virtualStage: 1),
                                    .forward(microBatch: 3, virtualStage: 1)])

        // Megatron: pp = 2, v = 2, m = 4 on rank 0 runs chunk 0 on micro-batches 0, 1, then chunk 1 on 0, 1, …
        let interleaved = try PipelineSchedule(kind: .interleaved, stages: 2, microBatches: 4, virtualStages: 2)
        #expect(interleaved.forwardOrder(rank: 0) == [(0, 0), (1, 0), (0, 2), (1, 2), (2, 0), (3, 0), (2, 2), (3, 2)]
            .map { .forward(microBatch: $0.0, virtualStage: $0.1) })
        #expect(interleaved.backwardOrder(rank: 1) == [(0, 3), (1, 3), (0, 1), (1, 1), (2, 3), (3, 3), (2, 1), (3, 1)]
            .map { .backward(microBatch: $0.0, virtualStage: $0.1) })
    }

    @Test func bubbleFormula() {
        #expect(PipelineSchedule.bubbleFormula(stages: 4, microBatches: 8) == 3.0 / 11.0)
        #expect(PipelineSchedule.bubbleFormula(stages: 4, microBatches: 8, virtualStages: 2) == 3.0 / 19.0)
        #expect(PipelineSchedule.bubbleFormula(stages: 1, microBatches: 8) == 0)
    }

    @Test func refusesInvalidConfigurations() {
        func message(_ kind: PipelineScheduleKind, _ pp: Int, _ m: Int, _ v: Int) -> String? {
            let error = #expect(throws: ConvoyError.self) { try PipelineSchedule(kind: kind, stages: pp, microBatches: m, virtualStages: v) }
            return error.map { "\($0)" }
        }
        #expect(message(.gpipe, 0, 4, 1)?.contains("pp = 0") == true)
        #expect(message(.oneForwardOneBackward, 2, 0, 1)?.contains("accumulate_steps = 0") == true)
        #expect(message(.interleaved, 2, 4, 0)?.contains("virtual_stages = 0") == true)
        #expect(message(.oneForwardOneBackward, 2, 4, 2)?.contains("virtual_stages = 2") == true)
        #expect(message(.gpipe, 2, 4, 3)?.contains("interleaved-1f1b") == true)
        #expect(message(.interleaved, 1, 4, 2)?.contains("pp ≥ 2") == true)
        let notMultiple = message(.interleaved, 4, 6, 2)
        #expect(notMultiple?.contains("accumulate_steps = 6") == true)
        #expect(notMultiple?.contains("pp = 4; use 4 or 8") == true)
        #expect(message(.interleaved, 4, 3, 2)?.contains("use 4") == true)
    }
}
