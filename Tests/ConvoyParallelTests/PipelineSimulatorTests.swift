import ConvoyParallel
import ConvoyTensor
import Testing

/// The error message a simulation throws, or nil (and a recorded failure) when it does not throw.
private func simulationError(_ instructions: [[PipelineInstruction]], microBatches: Int) -> String? {
    let error = #expect(throws: ConvoyError.self) {
        try PipelineSimulator().simulate(instructions: instructions, microBatches: microBatches)
    }
    return error.map { "\($0)" }
}

@Suite struct PipelineSimulatorTests {
    @Test(arguments: PipelineScheduleCase.grid)
    func schedulesRunWithoutDeadlock(_ configuration: PipelineScheduleCase) throws {
        let schedule = try configuration.schedule()
        let simulation = try PipelineSimulator().simulate(schedule)
        #expect(simulation.peakStashedMicroBatches == (0..<configuration.stages).map { schedule.peakStashedMicroBatches(rank: $0) })
        #expect(simulation.spans.map(\.count) == schedule.instructions.map(\.count))
        // Each rank computes v·m forwards and backwards of cost 1 and 2.
        #expect(simulation.busyTime.allSatisfy { $0 == Double(3 * configuration.microBatches * configuration.virtualStages) })
        for rankSpans in simulation.spans {
            #expect(zip(rankSpans, rankSpans.dropFirst()).allSatisfy { $0.end <= $1.start })
        }
    }

    /// Equal stages and free communication make GPipe and 1F1B take (m + p − 1)(f + b) exactly.
    @Test(arguments: PipelineScheduleCase.grid.filter { $0.virtualStages == 1 })
    func bubbleMatchesFormula(_ configuration: PipelineScheduleCase) throws {
        let simulation = try PipelineSimulator().simulate(configuration.schedule())
        let p = configuration.stages, m = configuration.microBatches
        #expect(simulation.computeEnd == Double(3 * (m + p - 1)))
        #expect(abs(simulation.bubbleFraction - PipelineSchedule.bubbleFormula(stages: p, microBatches: m)) < 1e-12)
    }

    /// With per-chunk costs f/v and b/v and free communication, Megatron's interleaved schedule (warm-up
    /// 2(pp − r − 1) + (v − 1)pp) meets the estimate (p−1)/(v·m+p−1) to rounding on every grid configuration,
    /// and so beats 1F1B whenever there is a bubble.
    @Test(arguments: PipelineScheduleCase.grid.filter { $0.kind == .interleaved && $0.virtualStages > 1 })
    func interleavingMeetsItsBubbleFormula(_ configuration: PipelineScheduleCase) throws {
        let p = configuration.stages, m = configuration.microBatches, v = configuration.virtualStages
        let oneF1B = try PipelineSimulator().simulate(PipelineSchedule(kind: .oneForwardOneBackward, stages: p, microBatches: m))
        let chunkCosts = PipelineSimulator(costModel: .uniform(forward: 1 / Double(v), backward: 2 / Double(v)))
        let interleaved = try chunkCosts.simulate(configuration.schedule())
        let formula = PipelineSchedule.bubbleFormula(stages: p, microBatches: m, virtualStages: v)
        #expect(abs(interleaved.bubbleFraction - formula) < 1e-9)
        #expect(interleaved.bubbleFraction < oneF1B.bubbleFraction)
    }

    @Test func timesFollowCostsAndLatency() throws {
        let costs = PipelineCostModel(forwardCosts: [1], backwardCosts: [2], sendCost: 0.5, receiveCost: 0.25, messageLatency: 1)
        let schedule = try PipelineSchedule(kind: .gpipe, stages: 2, microBatches: 1)
        let simulation = try PipelineSimulator(costModel: costs).simulate(schedule)
        let rank0 = simulation.spans[0].map { [$0.start, $0.end] }
        // load, forward, send (message arrives at 2.5); rank 1 receives at 2.5, returns the gradient at 7.25.
        #expect(rank0 == [[0, 0], [0, 1], [1, 1.5], [7.25, 7.5], [7.5, 9.5], [9.5, 9.5], [9.5, 9.5]])
        let rank1 = simulation.spans[1].map { [$0.start, $0.end] }
        #expect(rank1 == [[0, 0], [2.5, 2.75], [2.75, 3.75], [3.75, 5.75], [5.75, 6.25], [6.25, 6.25], [6.25, 6.25]])
        #expect(simulation.computeEnd == 9.5)
        #expect(simulation.makespan == 9.5)
        #expect(abs(simulation.bubbleFraction - (1 - 6.0 / 19.0)) < 1e-12)
    }

    @Test func perStageCostsAndEndOfStepAreTimed() throws {
        let costs = PipelineCostModel(forwardCosts: [1, 3], backwardCosts: [2, 6], reduceGradientsCost: 4, optimizerStepCost: 1)
        let simulation = try PipelineSimulator(costModel: costs).simulate(PipelineSchedule(kind: .oneForwardOneBackward, stages: 2, microBatches: 2))
        #expect(simulation.busyTime == [6, 18])
        #expect(simulation.makespan == simulation.computeEnd + 5)
        let wrongLength = PipelineCostModel(forwardCosts: [1, 1, 1], backwardCosts: [2])
        let error = #expect(throws: ConvoyError.self) {
            try PipelineSimulator(costModel: wrongLength).simulate(PipelineSchedule(kind: .gpipe, stages: 2, microBatches: 2))
        }
        #expect(error.map { "\($0)" }?.contains("3 forward costs for 2 virtual stages") == true)
    }

    /// Rank 0 waits for the gradient of micro-batch 0 before sending its activation: each rank waits on the other.
    @Test func reportsCircularWaitAsDeadlock() throws {
        var programs = try PipelineSchedule(kind: .oneForwardOneBackward, stages: 2, microBatches: 2).instructions
        let receive = PipelineInstruction.receiveGradient(microBatch: 0, virtualStage: 0, from: 1)
        programs[0].removeAll { $0 == receive }
        programs[0].insert(receive, at: programs[0].firstIndex(of: .sendActivation(microBatch: 0, virtualStage: 0, to: 1))!)
        let message = try #require(simulationError(programs, microBatches: 2))
        #expect(message.contains("deadlocks"))
        #expect(message.contains("rank 0 waits at #2 receiveGradient(mb 0, stage 0, from rank 1)"))
        #expect(message.contains("rank 1 waits at #1 receiveActivation(mb 0, stage 1, from rank 0)"))
        #expect(message.contains("blocked at"))
    }

    @Test func reportsMissingSendAsDeadlock() throws {
        var programs = try PipelineSchedule(kind: .gpipe, stages: 3, microBatches: 4).instructions
        programs[1].removeAll { $0 == .sendActivation(microBatch: 2, virtualStage: 1, to: 2) }
        let message = try #require(simulationError(programs, microBatches: 4))
        #expect(message.contains("rank 2 waits at"))
        #expect(message.contains("receiveActivation(mb 2, stage 2, from rank 1) (rank 1 never sends it)"))
    }

    @Test func reportsUnreceivedMessagesAndMisorderedWork() throws {
        let programs = try PipelineSchedule(kind: .gpipe, stages: 2, microBatches: 1).instructions
        // Rank 0 stops after sending its activation; rank 1's gradient is never received.
        let truncated = [Array(programs[0].prefix(3)), programs[1]]
        #expect(simulationError(truncated, microBatches: 1)?.contains("to rank 0, which never receives it") == true)

        var early = programs
        early[1].swapAt(2, 3)  // backward before forward on rank 1
        #expect(simulationError(early, microBatches: 1)?.contains("runs before its forward") == true)

        var wrongRank = programs
        wrongRank[0][1] = .forward(microBatch: 0, virtualStage: 1)
        #expect(simulationError(wrongRank, microBatches: 1)?.contains("virtual stage 1 lives on rank 1") == true)

        var twice = programs
        twice[1].insert(.sendGradient(microBatch: 0, virtualStage: 1, to: 0), at: 5)
        #expect(simulationError(twice, microBatches: 1)?.contains("sends the same message a second time") == true)

        var unreduced = programs
        unreduced[1].insert(.reduceGradients, at: 0)
        #expect(simulationError(unreduced, microBatches: 1)?.contains("reduces gradients after 0 of the rank's 1 backwards") == true)
    }

    /// About 130k instructions: the worklist simulation must stay fast; no timing assertion, the time is printed.
    @Test func simulatesALargePipeline() throws {
        let schedule = try PipelineSchedule(kind: .oneForwardOneBackward, stages: 64, microBatches: 512)
        var simulation: PipelineSimulation?
        let elapsed = try ContinuousClock().measure { simulation = try PipelineSimulator().simulate(schedule) }
        let result = try #require(simulation)
        print("pp 64, m 512 1F1B: \(schedule.instructions.map(\.count).reduce(0, +)) instructions simulated in \(elapsed)")
        #expect(abs(result.bubbleFraction - PipelineSchedule.bubbleFormula(stages: 64, microBatches: 512)) < 1e-12)
        #expect(result.peakStashedMicroBatches == (0..<64).map { 64 - $0 })
    }

    /// Property test beyond the fixed grid: random (kind, pp, m, v) with random per-chunk costs and message
    /// latency. Every valid configuration runs to completion in the simulator (no deadlock), each rank does its
    /// v·m forwards and backwards exactly once, spans never overlap on a rank, and the bubble is in [0, 1);
    /// every invalid one is refused with a ConvoyError rather than a crash.
    @Test func randomSchedulesNeverDeadlock() throws {
        let generator = PhiloxRandom(seed: 29, stream: 1)
        var valid = 0
        for trial in 0..<600 {
            let draw = generator.block(UInt64(trial))
            let kind = PipelineScheduleKind.allCases[Int(draw.0 % 3)]
            let stages = 1 + Int(draw.1 % 9), microBatches = 1 + Int(draw.2 % 24), virtualStages = 1 + Int(draw.3 % 4)
            let schedule: PipelineSchedule
            do {
                schedule = try PipelineSchedule(kind: kind, stages: stages, microBatches: microBatches, virtualStages: virtualStages)
            } catch is ConvoyError {
                continue
            }
            valid += 1
            let chunks = stages * schedule.virtualStages
            let costs = generator.block(UInt64(10_000 + trial))
            let forward = (0..<chunks).map { 0.5 + Double(($0 * 7 + Int(costs.0 % 97)) % 13) / 8 }
            let model = PipelineCostModel(forwardCosts: forward, backwardCosts: forward.map { 2 * $0 }, messageLatency: Double(costs.1 % 5) / 10)
            let simulation = try PipelineSimulator(costModel: model).simulate(schedule)
            #expect(simulation.spans.map(\.count) == schedule.instructions.map(\.count), "\(kind.rawValue) pp \(stages) m \(microBatches) v \(virtualStages)")
            for (rank, instructions) in schedule.instructions.enumerated() {
                let forwards = instructions.filter { if case .forward = $0 { return true } else { return false } }.count
                let backwards = instructions.filter { if case .backward = $0 { return true } else { return false } }.count
                #expect(forwards == microBatches * schedule.virtualStages && backwards == forwards, "rank \(rank) of \(kind.rawValue) pp \(stages) m \(microBatches)")
            }
            for rankSpans in simulation.spans { #expect(zip(rankSpans, rankSpans.dropFirst()).allSatisfy { $0.end <= $1.start }) }
            #expect(simulation.bubbleFraction >= 0 && simulation.bubbleFraction < 1)
        }
        #expect(valid > 120, "only \(valid) of 600 draws were valid schedules")
    }
}
