import ConvoyComm
import ConvoyNN
import ConvoyParallel
import ConvoyTensor
import Foundation
import Testing

/// The shape of the GPT the plan tests reason about (4 layers).
let planModel = GPTConfiguration(vocabularySize: 32, contextLength: 8, layers: 4, heads: 2, width: 16).shape

@Suite struct ParallelPlanTests {
    /// The refusal a plan gives for `settings` on `world` ranks (nil when it is accepted).
    func refusal(_ settings: ParallelSettings, world: Int?) -> String? {
        do {
            _ = try ParallelPlan(settings: settings, worldSize: world, model: planModel)
            return nil
        } catch { return "\(error)" }
    }

    /// Every refused row of the rules table, triggered by a configuration, gives that row's reason — from the plan
    /// alone, so before any model exists.
    @Test func everyRefusedRuleGivesItsMessage() throws {
        func settings(_ change: (inout ParallelSettings) -> Void) -> ParallelSettings {
            var settings = ParallelSettings()
            settings.microBatches = 4
            change(&settings)
            return settings
        }
        let cases: [(features: [ParallelFeature], settings: ParallelSettings, world: Int)] = [
            ([.contextParallel], settings { $0.order = [.tp, .cp, .dp, .pp]; $0.contextParallelSize = 2 }, 2),
            ([.expertParallel], settings { $0.order = [.tp, .ep, .dp, .pp]; $0.expertParallelSize = 2 }, 2),
            ([.zero3, .pipeline], settings { $0.zeroStage = 3; $0.pipeline.stages = 2; $0.dataParallelSize = 2 }, 4),
            ([.zero3, .interleavedPipeline], settings { $0.zeroStage = 3; $0.pipeline.virtualStages = 2; $0.dataParallelSize = 2 }, 2),
            ([.sequenceParallel, .pipeline], settings { $0.tensorParallelSize = 2; $0.sequenceParallel = true; $0.pipeline.stages = 2 }, 4),
        ]
        let refused = CompositionRules.table.filter { if case .refused = $0.verdict { return true } else { return false } }
        #expect(Set(refused.map(\.features)) == Set(cases.map { $0.features.sorted() }), "every refused row has a case")
        for (features, settings, world) in cases {
            guard case .refused(let reason)? = CompositionRules.rule(for: features)?.verdict else {
                Issue.record("\(features) is not a refused row")
                continue
            }
            let message = refusal(settings, world: world)
            #expect(message?.contains(reason) == true, "\(features): \(message ?? "accepted")")
        }
    }

    @Test func conditionsAreCheckedWithWhatToChange() {
        var zeroOnOne = ParallelSettings()
        zeroOnOne.zeroStage = 2
        zeroOnOne.dataParallelSize = 1
        #expect(refusal(zeroOnOne, world: 1)?.contains("needs --dp 2 or more") == true)
        var tooDeep = ParallelSettings()
        tooDeep.pipeline.stages = 8
        #expect(refusal(tooDeep, world: 8)?.contains("4 layers") == true)
        var interleavedAlone = ParallelSettings()
        interleavedAlone.pipeline.virtualStages = 2
        #expect(refusal(interleavedAlone, world: 1)?.contains("needs pp > 1") == true)
        var micro = ParallelSettings()
        micro.dataParallelSize = 2
        micro.microBatches = 2
        micro.microBatchSize = 3
        micro.globalBatch = 8
        #expect(refusal(micro, world: 2)?.contains("micro_batch_size 3") == true)
        micro.microBatchSize = 2
        #expect(refusal(micro, world: 2) == nil)
        var wrongWorld = ParallelSettings()
        wrongWorld.dataParallelSize = 2
        wrongWorld.pipeline.stages = 2
        #expect(refusal(wrongWorld, world: 2)?.contains("world size 2") == true)
        var allowed = ParallelSettings()
        allowed.zeroStage = 1
        allowed.pipeline.stages = 2
        allowed.microBatches = 2
        #expect(refusal(allowed, world: 4) == nil)
    }

    @Test func dataParallelSizeFollowsTheWorldWhenNotGiven() throws {
        var settings = ParallelSettings()
        settings.pipeline.stages = 2
        settings.microBatches = 2
        let plan = try ParallelPlan(settings: settings, worldSize: 6, model: planModel)
        #expect(plan.mesh.dp == 3 && plan.mesh.pp == 2 && plan.mesh.size == 6)
        #expect(plan.features.contains(.dataParallel) && plan.features.contains(.pipeline))
        #expect(plan.partition?.stageLayers == [2, 2])
    }

    @Test func placementSectionsMakeStagesAndReplicas() throws {
        var settings = ParallelSettings()
        settings.microBatches = 2
        settings.placements = [ModulePlacement(modules: "transformer.h.[0-1]", devices: "cpu:0,cpu:1"),
                               ModulePlacement(modules: "transformer.h.[2-3]", devices: "cpu:2,cpu:3")]
        let plan = try ParallelPlan(settings: settings, worldSize: nil, model: planModel)
        #expect(plan.mesh.dp == 2 && plan.mesh.pp == 2)
        #expect(plan.placement?.stageRanks == [[0, 1], [2, 3]])
        #expect(plan.settings.pipeline.stageLayers == [2, 2])
        #expect(plan.mesh.groups(along: .dp) == [[0, 1], [2, 3]])
        // Uneven layers.
        settings.placements = [ModulePlacement(modules: "h.0", devices: "cpu:0"), ModulePlacement(modules: "h.[1-3]", devices: "cpu:1")]
        let uneven = try ParallelPlan(settings: settings, worldSize: 2, model: planModel)
        #expect(uneven.settings.pipeline.stageLayers == [1, 3] && uneven.mesh.dp == 1)
    }

    @Test func badPlacementsAreRefusedNamingTheProblem() {
        func message(_ sections: [(String, String)], world: Int? = nil) -> String {
            var settings = ParallelSettings()
            settings.microBatches = 2
            settings.placements = sections.map { ModulePlacement(modules: $0.0, devices: $0.1) }
            return refusal(settings, world: world) ?? "accepted"
        }
        #expect(message([("h.[0-1]", "cpu:0,cpu:1"), ("h.[2-3]", "cpu:2")]).contains("different data-parallel degrees"))
        #expect(message([("h.[0-1]", "cpu:0"), ("h.[2-3]", "cpu:0")]).contains("not contiguous") == false)
        #expect(message([("h.[0-1]", "cpu:0"), ("h.[2-3]", "cpu:1,cpu:0")]).contains("placed twice"))
        #expect(message([("h.[0-2]", "cpu:0")]).contains("h.3 is covered by no [[placement]]"))
        #expect(message([("h.*", "cpu:0,cpu:5")], world: 2).contains("cpu:5 does not exist"))
        #expect(message([("h.[0-3]", "cpu:0"), ("decoder.*", "cpu:1")]).contains("matches no module"))
        #expect(message([("h.[0-1]", "cpu:0"), ("h.[2-3]", "cpu:1"), ("wte", "cpu:1")]).contains("embeddings run with the first stage"))
        #expect(message([("h.0", "cpu:0"), ("h.[1-2]", "cpu:1"), ("h.3", "cpu:0")]).contains("not contiguous"))
        #expect(message([("h.*", "cpu:0,,")]).contains("[[placement]] devices"))
        #expect(message([("h.*", "host1:cpu:0")]).contains("hosts come from mpirun's hostfile"))
        #expect(message([("h.[0-1]", "cpu:0,cpu:2"), ("h.[2-3]", "cpu:1,cpu:3")]).contains("list those devices, in that order, or change parallel.order"))
    }

    /// The glob matcher against a reference built from the pattern's meaning, over random names and patterns.
    @Test func globPatternsMatchWhatTheySay() {
        let generator = PhiloxRandom(seed: 3, stream: 0)
        for trial in 0..<300 {
            let numbers = generator.block(UInt64(trial))
            let layer = Int(numbers.0 % 40), low = Int(numbers.1 % 20), high = low + Int(numbers.2 % 20)
            let range = ModulePlacement(modules: "h.[\(low)-\(high)]", devices: "cpu:0")
            #expect(range.matches("h.\(layer)") == (low...high).contains(layer), "h.[\(low)-\(high)] vs h.\(layer)")
            #expect(ModulePlacement(modules: "transformer.h.[\(low)-\(high)]", devices: "cpu:0").matches("h.\(layer)") == (low...high).contains(layer))
            #expect(ModulePlacement(modules: "h.*", devices: "cpu:0").matches("h.\(layer)"))
            #expect(!ModulePlacement(modules: "h.?", devices: "cpu:0").matches("h.\(layer)") == (layer >= 10))
            #expect(!range.matches("x.\(layer)"))
        }
        #expect(ModulePlacement(modules: "w*", devices: "cpu:0").matches("wte") && ModulePlacement(modules: "w*", devices: "cpu:0").matches("wpe"))
        #expect(!ModulePlacement(modules: "h.[1-2]", devices: "cpu:0").matches("h.12"))
        #expect(ModulePlacement(modules: "h.[1-2]*", devices: "cpu:0").matches("h.12"))
    }
}
