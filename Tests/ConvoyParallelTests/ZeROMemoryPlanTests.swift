import ConvoyNN
import ConvoyParallel
import ConvoyTensor
import Testing

/// Ψ of GPT-mini (6 × 384, 6 heads, context 256, vocabulary 256).
private let gptMiniParameters = 10_844_160

@Suite struct ZeROMemoryPlanTests {
    @Test(arguments: [1, 2, 4, 8])
    func adamMatchesDesignFormulas(dp n: Int) throws {
        let psi = gptMiniParameters
        #expect(psi % n == 0)
        let expected = [16 * psi, 8 * psi + 8 * psi / n, 4 * psi + 12 * psi / n, 16 * psi / n]
        for stage in 0...3 {
            for optimizer in [ZeROMemoryPlan.OptimizerKind.adam, .adamW] {
                let plan = try ZeROMemoryPlan(parameterCount: psi, dataParallelSize: n, stage: stage, optimizer: optimizer)
                #expect(plan.totalBytes == expected[stage], "stage \(stage), N \(n)")
                #expect(plan.totalBytes == plan.parameterBytes + plan.gradientBytes + plan.optimizerStateBytes)
            }
        }
        let plans = try ZeROMemoryPlan.allStages(parameterCount: psi, dataParallelSize: n)
        #expect(plans.map(\.stage) == [0, 1, 2, 3])
        #expect(plans.map(\.totalBytes) == expected)
    }

    @Test func partsFollowPartitionSemantics() throws {
        let psi = gptMiniParameters, n = 4
        let parts = try (0...3).map { stage in
            let plan = try ZeROMemoryPlan(parameterCount: psi, dataParallelSize: n, stage: stage)
            return [plan.parameterBytes, plan.gradientBytes, plan.optimizerStateBytes]
        }
        #expect(parts[0] == [4 * psi, 4 * psi, 8 * psi])
        #expect(parts[1] == [4 * psi, 4 * psi, 8 * psi / n])
        #expect(parts[2] == [4 * psi, 4 * psi / n, 8 * psi / n])
        #expect(parts[3] == [4 * psi / n, 4 * psi / n, 8 * psi / n])
    }

    @Test(arguments: [1, 2, 4])
    func bf16ComputeCopiesAddTheSeparateFP32Masters(dp n: Int) throws {
        // Masters apart from the parameters: a replicated side buffer at stage 0, a shard at stages 1–2, and
        // none at stage 3, whose parameter shard is itself the master.
        let psi = gptMiniParameters
        let expected = [20 * psi, 8 * psi + 12 * psi / n, 4 * psi + 16 * psi / n, 16 * psi / n]
        let plans = try (0...3).map { try ZeROMemoryPlan(parameterCount: psi, dataParallelSize: n, stage: $0, parameterDType: .bfloat16) }
        #expect(plans.map(\.totalBytes) == expected)
        #expect(plans.map(\.masterBytes) == [4 * psi, 4 * psi / n, 4 * psi / n, 0])
        #expect(plans.map(\.formula) == ["20Ψ", "8Ψ + 12Ψ/N", "4Ψ + 16Ψ/N", "16Ψ/N"])
        #expect(try ZeROMemoryPlan(parameterCount: psi, dataParallelSize: n, stage: 2).masterBytes == 0, "fp32 keeps no separate masters")
    }

    @Test func formulaStrings() throws {
        let adam = try ZeROMemoryPlan.allStages(parameterCount: 100, dataParallelSize: 2).map(\.formula)
        #expect(adam == ["16Ψ", "8Ψ + 8Ψ/N", "4Ψ + 12Ψ/N", "16Ψ/N"])
        let sgd = try ZeROMemoryPlan.allStages(parameterCount: 100, dataParallelSize: 2, optimizer: .sgd).map(\.formula)
        #expect(sgd == ["8Ψ", "8Ψ", "4Ψ + 4Ψ/N", "8Ψ/N"])
    }

    @Test func unevenParameterCountRoundsUpPerRank() throws {
        let psi = 10, n = 4  // ⌈10/4⌉ = 3 elements per shard
        let plan1 = try ZeROMemoryPlan(parameterCount: psi, dataParallelSize: n, stage: 1)
        #expect(plan1.shardElementCount == 3)
        #expect(plan1.optimizerStateBytes == 3 * 8)
        #expect(plan1.parameterBytes == 40 && plan1.gradientBytes == 40)
        let plan2 = try ZeROMemoryPlan(parameterCount: psi, dataParallelSize: n, stage: 2)
        #expect(plan2.totalBytes == 40 + 3 * 4 + 3 * 8)
        let plan3 = try ZeROMemoryPlan(parameterCount: psi, dataParallelSize: n, stage: 3)
        #expect(plan3.totalBytes == 3 * 16)
        // Every rank holding ⌈Ψ/N⌉ covers all of Ψ, never less.
        #expect(plan3.shardElementCount * n >= psi)
        // GPT-mini over 7 ranks: 10,844,160 = 7 · 1,549,165 + 5.
        let mini = try ZeROMemoryPlan(parameterCount: gptMiniParameters, dataParallelSize: 7, stage: 3)
        #expect(mini.shardElementCount == 1_549_166)
        #expect(mini.totalBytes == 16 * 1_549_166)
    }

    @Test func sgdAndMomentum() throws {
        let psi = gptMiniParameters, n = 2
        for stage in 0...3 {
            let sgd = try ZeROMemoryPlan(parameterCount: psi, dataParallelSize: n, stage: stage, optimizer: .sgd)
            let momentum = try ZeROMemoryPlan(parameterCount: psi, dataParallelSize: n, stage: stage, optimizer: .momentum)
            let nesterov = try ZeROMemoryPlan(parameterCount: psi, dataParallelSize: n, stage: stage, optimizer: .nesterov)
            #expect(sgd.optimizerStateBytes == 0)
            #expect(momentum.optimizerStateBytes == (stage >= 1 ? 4 * psi / n : 4 * psi))
            #expect(nesterov == (try ZeROMemoryPlan(parameterCount: psi, dataParallelSize: n, stage: stage, optimizer: .nesterov)))
            #expect(nesterov.totalBytes == momentum.totalBytes)
            #expect(momentum.parameterBytes == sgd.parameterBytes && momentum.gradientBytes == sgd.gradientBytes)
        }
        let momentumTotals = try ZeROMemoryPlan.allStages(parameterCount: psi, dataParallelSize: n, optimizer: .momentum).map(\.totalBytes)
        #expect(momentumTotals == [12 * psi, 8 * psi + 4 * psi / n, 4 * psi + 8 * psi / n, 12 * psi / n])
        let sgdTotals = try ZeROMemoryPlan.allStages(parameterCount: psi, dataParallelSize: n, optimizer: .sgd).map(\.totalBytes)
        #expect(sgdTotals == [8 * psi, 8 * psi, 4 * psi + 4 * psi / n, 8 * psi / n])
    }

    @Test func optimizerNames() throws {
        #expect(try ZeROMemoryPlan.OptimizerKind(name: "adamw") == .adamW)
        #expect(try ZeROMemoryPlan.OptimizerKind(name: "AdamW") == .adamW)
        #expect(try ZeROMemoryPlan.OptimizerKind(name: "adam") == .adam)
        #expect(try ZeROMemoryPlan.OptimizerKind(name: "sgd") == .sgd)
        #expect(try ZeROMemoryPlan.OptimizerKind(name: "momentum") == .momentum)
        expectConfigurationError(naming: "--optimizer") { _ = try ZeROMemoryPlan.OptimizerKind(name: "lamb") }
    }

    @Test(arguments: [-1, 4, 7])
    func stageOutsideRangeIsRefused(stage: Int) {
        expectConfigurationError(naming: "--zero-stage") {
            _ = try ZeROMemoryPlan(parameterCount: gptMiniParameters, dataParallelSize: 2, stage: stage)
        }
    }

    @Test(arguments: [0, -3])
    func dataParallelSizeBelowOneIsRefused(dp: Int) {
        expectConfigurationError(naming: "--dp") {
            _ = try ZeROMemoryPlan(parameterCount: gptMiniParameters, dataParallelSize: dp, stage: 1)
        }
    }

    @Test func paddedParameterCount() throws {
        // Buckets of 10, 8 and 1 elements over 4 ranks pad to 12, 8 and 4.
        #expect(ZeROMemoryPlan.paddedParameterCount(bucketElementCounts: [10, 8, 1], dataParallelSize: 4) == 24)
        #expect(ZeROMemoryPlan.paddedParameterCount(bucketElementCounts: [10, 8, 1], dataParallelSize: 1) == 19)
        let padded = try ZeROMemoryPlan(parameterCount: 24, dataParallelSize: 4, stage: 3)
        #expect(padded.totalBytes == 16 * 24 / 4)
    }

    @Test func presets() throws {
        let mini = try ZeROMemoryPlan.modelPreset(named: "gpt-mini")
        let reference = GPTConfiguration(contextLength: 256, layers: 6, heads: 6, width: 384)
        #expect(mini.parameterCount == reference.parameterCount)
        #expect(mini.parameterCount == gptMiniParameters)
        let arithmetic = try ZeROMemoryPlan.modelPreset(named: "arithmetic")
        #expect(arithmetic == GPTConfiguration(contextLength: 16, layers: 4, heads: 4, width: 128))
        expectConfigurationError(naming: "--model") { _ = try ZeROMemoryPlan.modelPreset(named: "gpt-huge") }
    }
}

/// Expects `body` to throw ``ConvoyError/invalidConfiguration(_:)`` whose message names `flag`.
private func expectConfigurationError(naming flag: String, sourceLocation: SourceLocation = #_sourceLocation, _ body: () throws -> Void) {
    do {
        try body()
        Issue.record("expected an error naming \(flag)", sourceLocation: sourceLocation)
    } catch let ConvoyError.invalidConfiguration(message) {
        #expect(message.contains(flag), "message: \(message)", sourceLocation: sourceLocation)
    } catch {
        Issue.record("unexpected error \(error)", sourceLocation: sourceLocation)
    }
}
