import ConvoyComm
import ConvoyNN
import ConvoyParallel
import ConvoyTensor
import ConvoyTrain
import Foundation
import Testing

func scratchDirectory(_ label: String) -> String {
    FileManager.default.temporaryDirectory.appendingPathComponent("convoy-\(label)-\(UUID().uuidString)").path
}

/// A small, fast configuration: 1-digit arithmetic on a tiny GPT.
func tinyConfiguration(output: String, steps: Int = 12) throws -> TrainingConfiguration {
    try TrainingSettings.resolve(configFile: nil, flags: [
        ("--digits", "1"), ("--held-out", "5"), ("--context", "8"), ("--layers", "1"), ("--d-model", "16"), ("--heads", "2"),
        ("--batch", "8"), ("--steps", String(steps)), ("--warmup", "2"), ("--lr", "0.01"), ("--eval-every", "0"),
        ("--output", output), ("--log-every", "1"),
    ])
}

func weights(_ model: Module) -> [[Float]] { model.parameters.map { $0.toArray() } }

@Suite struct TrainerTests {
    @Test func lossFallsAndOutputsAreWritten() throws {
        let output = scratchDirectory("train")
        defer { try? FileManager.default.removeItem(atPath: output) }
        var configuration = try tinyConfiguration(output: output, steps: 60)
        configuration.learningRate = 0.02
        let trainer = try Trainer(configuration: configuration)
        let first = try trainer.trainStep(0).loss
        let summary = try Trainer(configuration: configuration).run()
        #expect(summary.finalLoss < first * 0.7, "loss went from \(first) to \(summary.finalLoss)")
        let lines = try String(contentsOfFile: output + "/metrics.jsonl", encoding: .utf8).split(separator: "\n")
        let records = lines.compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
        let stepRecords = records.filter { $0["loss"] != nil }
        #expect(stepRecords.count == 60)
        for key in ["step", "loss", "lr", "tokens_per_s", "grad_norm", "elapsed_s"] {
            #expect(stepRecords.allSatisfy { $0[key] != nil }, "metrics lack \(key)")
        }
        #expect(records.contains { $0["accuracy"] != nil })
        let effective = try String(contentsOfFile: output + "/config.toml", encoding: .utf8)
        var reread = TrainingConfiguration()
        try TrainingSettings.apply(toml: effective, source: "config.toml", to: &reread)
        #expect(reread == configuration)
        #expect(FileManager.default.fileExists(atPath: output + "/final/model.safetensors"))
        #expect(FileManager.default.fileExists(atPath: output + "/final/trainer.json"))
    }

    @Test func resumingGivesBitIdenticalWeights() throws {
        let straight = scratchDirectory("straight"), split = scratchDirectory("split")
        defer { for path in [straight, split] { try? FileManager.default.removeItem(atPath: path) } }
        // 2N steps in one go, with a periodic checkpoint at N.
        var configuration = try tinyConfiguration(output: straight, steps: 10)
        configuration.checkpointEvery = 5
        configuration.dropout = 0.1
        let full = try Trainer(configuration: configuration)
        _ = try full.run()
        // Resume from the step-N checkpoint in another output directory and finish.
        var resumed = configuration
        resumed.output = split
        resumed.checkpointEvery = 0
        let second = try Trainer(configuration: resumed, resume: straight + "/checkpoint")
        #expect(second.firstStep == 5)
        _ = try second.run()
        #expect(weights(second.model) == weights(full.model))
        // The optimizer state resumed too: the saved final states agree.
        let a = try ShardedCheckpointReader(directory: straight + "/final"), b = try ShardedCheckpointReader(directory: split + "/final")
        #expect(a.index.names(of: .optimizer) == b.index.names(of: .optimizer) && !a.index.names(of: .optimizer).isEmpty)
        for key in a.index.names(of: .optimizer) { #expect(try a.readWhole(key).toArray() == b.readWhole(key).toArray()) }
        #expect(a.index.optimizerScalars == b.index.optimizerScalars)
    }

    @Test func gradientAccumulationMatchesOneBigBatch() throws {
        let one = scratchDirectory("accumulate1"), four = scratchDirectory("accumulate4")
        defer { for path in [one, four] { try? FileManager.default.removeItem(atPath: path) } }
        // SGD keeps the comparison about gradients: Adam's normalised update would magnify rounding
        // differences of near-zero gradients.
        var wholeConfiguration = try tinyConfiguration(output: one, steps: 3)
        wholeConfiguration.optimizer = "sgd"
        wholeConfiguration.learningRate = 0.5
        let whole = try Trainer(configuration: wholeConfiguration)
        var accumulatedConfiguration = wholeConfiguration
        accumulatedConfiguration.output = four
        accumulatedConfiguration.accumulateSteps = 4
        let accumulated = try Trainer(configuration: accumulatedConfiguration)
        for step in 0..<3 {
            let a = try whole.trainStep(step), b = try accumulated.trainStep(step)
            #expect(abs(a.loss - b.loss) <= 1e-5 * abs(a.loss))
        }
        for (x, y) in zip(weights(whole.model), weights(accumulated.model)) {
            let scale = max(x.map(abs).max()!, 1e-6)
            #expect(zip(x, y).map { abs($0 - $1) }.max()! <= 1e-5 * scale)
        }
    }

    @Test func aFailedSaveLeavesThePreviousCheckpointLoadable() throws {
        let output = scratchDirectory("atomic")
        defer { try? FileManager.default.removeItem(atPath: output) }
        let configuration = try tinyConfiguration(output: output, steps: 4)
        let trainer = try Trainer(configuration: configuration)
        _ = try trainer.trainStep(0)
        let directory = output + "/checkpoint"
        let goodState = TrainerState(step: 1, seed: configuration.seed, dataPosition: configuration.batch, configuration: TrainingSettings.tomlText(configuration), optimizer: configuration.optimizer)
        try TrainingCheckpoint.save(model: trainer.model, optimizer: trainer.optimizer, state: goodState, to: directory)
        let saved = weights(trainer.model)
        _ = try trainer.trainStep(1)
        #expect(weights(trainer.model) != saved)
        for stage in [TrainingCheckpoint.SaveStage.afterPieces, .beforeRename] {
            var laterState = goodState
            laterState.step = 2
            #expect(throws: ConvoyError.self) {
                try TrainingCheckpoint.save(model: trainer.model, optimizer: trainer.optimizer, state: laterState, to: directory, failingAt: stage)
            }
            let fresh = try Trainer(configuration: configuration)
            let contents = try TrainingCheckpoint.load(from: directory, into: fresh.model)
            #expect(contents.state.step == 1)
            #expect(weights(fresh.model) == saved)
        }
        // No temporary directories are left behind.
        let leftovers = try FileManager.default.contentsOfDirectory(atPath: output).filter { $0.contains(".tmp-") }
        #expect(leftovers.isEmpty)
        // A crash between the two renames leaves the old checkpoint aside; loading falls back to it.
        try FileManager.default.moveItem(atPath: directory, toPath: directory + ".previous")
        let fallback = try Trainer(configuration: configuration)
        #expect(try TrainingCheckpoint.load(from: directory, into: fallback.model).state.step == 1)
    }

    @Test func corruptOrIncompatibleCheckpointsAreRefused() throws {
        let output = scratchDirectory("refuse")
        defer { try? FileManager.default.removeItem(atPath: output) }
        let configuration = try tinyConfiguration(output: output, steps: 2)
        _ = try Trainer(configuration: configuration).run()
        let final = output + "/final"

        var wider = configuration
        wider.dModel = 32
        #expect(throws: ConvoyError.self) { try Trainer(configuration: wider, resume: final) }
        var otherSeed = configuration
        otherSeed.seed = 7
        #expect(throws: ConvoyError.self) { try Trainer(configuration: otherSeed, resume: final) }
        #expect(throws: ConvoyError.self) { try Trainer(configuration: configuration, resume: output + "/does-not-exist") }

        let weightsPath = final + "/" + CheckpointIndex.rankFileName(rank: 0, of: 1)
        let bytes = try Data(contentsOf: URL(fileURLWithPath: weightsPath))
        try bytes.prefix(bytes.count - 10).write(to: URL(fileURLWithPath: weightsPath))
        #expect(throws: ConvoyError.self) { try Trainer(configuration: configuration, resume: final) }
        try Data("{not json".utf8).write(to: URL(fileURLWithPath: final + "/trainer.json"))
        #expect(throws: ConvoyError.self) { try Trainer(configuration: configuration, resume: final) }
    }
}

@Suite struct PlacementManifestTests {
    /// Every checkpoint records the mesh and each parameter's placement, for people and tools; a resume does not
    /// depend on it (the index's pieces are boxes of the global tensors).
    @Test func checkpointsRecordPlacementsAndResumeReadsThem() throws {
        let output = scratchDirectory("placement")
        defer { try? FileManager.default.removeItem(atPath: output) }
        var configuration = try tinyConfiguration(output: output, steps: 2)
        configuration.dp = 2
        let frozen = configuration
        _ = try LocalWorld.run(size: 2, threadsPerRank: 1) { group in try Trainer(configuration: frozen, group: group).run() }
        let final = configuration.finalCheckpointDirectory
        let manifest = try #require(try PlacementManifest.read(from: final))
        #expect(manifest.order == "tp-dp-pp" && manifest.sizes == ["tp": 1, "dp": 2, "pp": 1])
        #expect(Set(manifest.parameters.keys) == Set(try GPT(configuration.modelConfiguration, seed: 1).namedParameters().map(\.name)))
        #expect(manifest.parameters.values.allSatisfy { $0.axes.isEmpty })

        // One rank resumes the dp 2 run, whatever the manifest says.
        var resumed = configuration
        resumed.steps = 3
        resumed.output = output + "/resumed"
        resumed.dp = nil  // the whole optimizer state was saved: one rank can continue a dp 2 run
        _ = try Trainer(configuration: resumed, resume: final)
        var tampered = manifest
        tampered.parameters["h.0.attn.c_attn.weight"]?.axes = ["tp": "Shard(1)"]
        try tampered.encoded().write(to: URL(fileURLWithPath: final + "/" + PlacementManifest.fileName))
        #expect(try Trainer(configuration: resumed, resume: final).firstStep == 2)
    }
}
