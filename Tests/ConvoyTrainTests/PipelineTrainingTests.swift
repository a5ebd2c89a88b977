import ConvoyComm
import ConvoyNN
import ConvoyParallel
import ConvoyTensor
import ConvoyTrain
import Foundation
import Testing

@Suite(.serialized) struct PipelineTrainingTests {
    /// Four layers (so pp 4 and pp 2 × v 2 have a layer per chunk), dropout on, clipping at the default 1.0.
    func configuration(output: String) throws -> TrainingConfiguration {
        var configuration = try tinyConfiguration(output: output, steps: 10)
        configuration.layers = 4
        configuration.optimizer = "momentum"
        configuration.learningRate = 0.05
        configuration.dropout = 0.1
        configuration.accumulateSteps = 1
        return configuration
    }

    func relativeError(_ a: [[Float]], _ b: [[Float]]) -> Float {
        zip(a, b).map { x, y in zip(x, y).map { abs($0 - $1) }.max()! / max(x.map(abs).max()!, 1e-6) }.max()!
    }

    /// (pp, dp, schedule, micro-batches, virtual stages, zero stage)
    @Test(arguments: [(2, 1, "1f1b", 4, 1, 0), (2, 2, "gpipe", 2, 1, 0), (2, 2, "1f1b", 2, 1, 1), (2, 2, "1f1b", 2, 1, 2), (2, 1, "interleaved-1f1b", 2, 2, 0)])
    func pipelineTrainingMatchesOneProcess(pp: Int, dp: Int, schedule: String, microBatches: Int, virtualStages: Int, zeroStage: Int) throws {
        let single = scratchDirectory("pp-single"), parallel = scratchDirectory("pp-parallel")
        defer { for path in [single, parallel] { try? FileManager.default.removeItem(atPath: path) } }
        let reference = try configuration(output: single)
        let one = try Trainer(configuration: reference)
        let oneSummary = try one.run()
        var pipelined = reference
        pipelined.output = parallel
        pipelined.accumulateSteps = microBatches
        pipelined.zeroStage = zeroStage
        try TrainingSettings.applyFlag("--pp", String(pp), to: &pipelined)
        try TrainingSettings.applyFlag("--schedule", schedule, to: &pipelined)
        try TrainingSettings.applyFlag("--virtual-stages", String(virtualStages), to: &pipelined)
        try pipelined.validate()
        let frozen = pipelined
        let results = try LocalWorld.run(size: pp * dp, threadsPerRank: 1) { group -> ([[Float]], Double) in
            let trainer = try Trainer(configuration: frozen, group: group)
            #expect(trainer.plan.mesh.dp == dp && trainer.plan.mesh.pp == pp)
            let summary = try trainer.run()
            return (group.rank == 0 ? trainer.model.parameters.map { $0.toArray() } : [], summary.finalLoss)
        }
        let error = relativeError(results[0].0, one.model.parameters.map { $0.toArray() })
        #expect(error <= 1e-5, "pp \(pp) × dp \(dp) \(schedule) m \(microBatches) v \(virtualStages) zero \(zeroStage): relative error \(error)")
        for result in results { #expect(abs(result.1 - oneSummary.finalLoss) <= 1e-5 * abs(oneSummary.finalLoss)) }
        // Rank 0 saved the whole model, which loads into one process.
        let loaded = try GPTCheckpoint.load(from: parallel + "/final")
        #expect(relativeError(loaded.parameters.map { $0.toArray() }, results[0].0) == 0)
    }

    @Test func resumingAPipelineIsBitIdenticalAndAnotherPartitionResumesToo() throws {
        let straight = scratchDirectory("pp-straight"), split = scratchDirectory("pp-split")
        defer { for path in [straight, split] { try? FileManager.default.removeItem(atPath: path) } }
        var configuration = try configuration(output: straight)
        configuration.optimizer = "adamw"
        configuration.accumulateSteps = 2
        configuration.checkpointEvery = 5
        configuration.pipeline.stages = 2
        let frozen = configuration
        let full = try LocalWorld.run(size: 4, threadsPerRank: 1) { group -> [[Float]] in
            let trainer = try Trainer(configuration: frozen, group: group)
            _ = try trainer.run()
            // Only rank 0 holds the whole model; the others released what they do not own.
            return group.rank == 0 ? trainer.model.parameters.map { $0.toArray() } : []
        }
        let checkpoint = straight + "/checkpoint"
        #expect(FileManager.default.fileExists(atPath: checkpoint + "/" + CheckpointIndex.fileName))
        var resumed = frozen
        resumed.output = split
        resumed.checkpointEvery = 0
        let frozenResumed = resumed
        let continued = try LocalWorld.run(size: 4, threadsPerRank: 1) { group -> [[Float]] in
            let trainer = try Trainer(configuration: frozenResumed, group: group, resume: checkpoint)
            #expect(trainer.firstStep == 5)
            _ = try trainer.run()
            // Only rank 0 holds the whole model; the others released what they do not own.
            return group.rank == 0 ? trainer.model.parameters.map { $0.toArray() } : []
        }
        #expect(continued[0] == full[0], "resuming a pipeline must give bit-identical weights")

        // Another partition of the stages loads the same checkpoint: each rank reads the pieces of what it holds.
        var otherLayout = resumed
        otherLayout.output = split + "-other"
        otherLayout.pipeline.stageLayers = [1, 3]
        defer { try? FileManager.default.removeItem(atPath: otherLayout.output) }
        let frozenOther = otherLayout
        let steps = try LocalWorld.run(size: 4, threadsPerRank: 1) { group in try Trainer(configuration: frozenOther, group: group, resume: checkpoint).firstStep }
        #expect(steps == [5, 5, 5, 5])
    }

    @Test func badPipelineConfigurationsAreRefusedBeforeCompute() throws {
        func message(_ flags: [(String, String)]) -> String {
            do {
                _ = try TrainingSettings.resolve(configFile: nil, flags: [("--layers", "4"), ("--context", "8"), ("--digits", "1")] + flags)
                return "accepted"
            } catch { return "\(error)" }
        }
        #expect(message([("--pp", "2"), ("--dp", "2"), ("--batch", "8"), ("--accumulate-steps", "2"), ("--micro-batch-size", "3")]).contains("micro_batch_size 3"))
        #expect(message([("--pp", "2"), ("--schedule", "interleaved-1f1b"), ("--virtual-stages", "2"), ("--accumulate-steps", "3"), ("--batch", "6")]).contains("multiple of pp"))
        #expect(message([("--pp", "8")]).contains("4 layers"))
        #expect(message([("--pp", "2"), ("--stage-layers", "1,2")]).contains("3"))
        #expect(message([("--pp", "2"), ("--dp", "2"), ("--zero-stage", "3")]).contains("zero_stage 3"))
        #expect(message([("--pp", "2"), ("--schedule", "zigzag")]).contains("gpipe"))
        #expect(message([("--pp", "2"), ("--dp", "2"), ("--batch", "8"), ("--accumulate-steps", "2"), ("--micro-batch-size", "2")]) == "accepted")
        // A world that is not pp·dp is refused by the trainer.
        var configuration = try configuration(output: scratchDirectory("pp-bad"))
        configuration.pipeline.stages = 2
        configuration.dp = 2
        let frozen = configuration
        do {
            _ = try LocalWorld.run(size: 2, threadsPerRank: 1) { group in try Trainer(configuration: frozen, group: group) }
            Issue.record("dp 2 × pp 2 on 2 ranks must be refused")
        } catch {
            #expect("\(error)".contains("world size 2") && "\(error)".contains("--pp"), "\(error)")
        }
        // The pipeline keys round-trip through the effective configuration file.
        var parsed = TrainingConfiguration()
        try TrainingSettings.apply(toml: "[parallel.pipeline]\npp = 2\nschedule = \"GPipe\"\nstage_layers = [3, 1]\nmicro_batch_size = 4\n", source: "p.toml", to: &parsed)
        #expect(parsed.pipeline.stages == 2 && parsed.pipeline.schedule == .gpipe && parsed.pipeline.stageLayers == [3, 1] && parsed.microBatchSize == 4)
        var reparsed = TrainingConfiguration()
        try TrainingSettings.apply(toml: TrainingSettings.tomlText(parsed), source: "again.toml", to: &reparsed)
        #expect(reparsed == parsed)
    }

    /// The issue's example: `[[placement]]` sections put layers 0–1 on cpu:0,cpu:1 and layers 2–3 on cpu:2,cpu:3
    /// (embeddings follow the first layer, the final norm and head the last): a pipeline of 2 stages, each
    /// replicated on 2 ranks, that trains the same weights as one process. The configuration survives the
    /// effective config.toml written beside the run.
    @Test func placementSectionsDriveAPipelineThatMatchesOneProcess() throws {
        let single = scratchDirectory("placed-single"), placed = scratchDirectory("placed")
        defer { for path in [single, placed] { try? FileManager.default.removeItem(atPath: path) } }
        let reference = try configuration(output: single)
        let one = try Trainer(configuration: reference)
        _ = try one.run()
        var configuration = reference
        configuration.output = placed
        configuration.accumulateSteps = 2
        try TrainingSettings.apply(toml: """
            [[placement]]
            modules = "transformer.h.[0-1]"
            devices = "cpu:0,cpu:1"
            [[placement]]
            modules = "transformer.h.[2-3]"
            devices = "cpu:2,cpu:3"
            """, source: "placement.toml", to: &configuration)
        try configuration.validate()
        #expect(configuration.placements.count == 2)
        var reread = TrainingConfiguration()
        try TrainingSettings.apply(toml: TrainingSettings.tomlText(configuration), source: "config.toml", to: &reread)
        #expect(reread.placements == configuration.placements)
        let plan = try ParallelPlan(settings: try configuration.parallelSettings(), worldSize: nil, model: configuration.modelConfiguration.shape)
        #expect(plan.mesh.size == 4 && plan.mesh.pp == 2 && plan.mesh.dp == 2)
        let frozen = configuration
        let results = try LocalWorld.run(size: plan.mesh.size, threadsPerRank: 1) { group -> [[Float]] in
            let trainer = try Trainer(configuration: frozen, group: group)
            #expect(trainer.plan.settings.pipeline.stageLayers == [2, 2])
            _ = try trainer.run()
            return group.rank == 0 ? trainer.model.parameters.map { $0.toArray() } : []
        }
        let error = relativeError(results[0], one.model.parameters.map { $0.toArray() })
        #expect(error <= 1e-5, "placement-driven pp 2 × dp 2: relative error \(error)")
        // A world that does not match the placement is refused before any compute.
        #expect(throws: ConvoyError.self) {
            _ = try LocalWorld.run(size: 2, threadsPerRank: 1) { group in try Trainer(configuration: frozen, group: group) }
        }
    }
}
