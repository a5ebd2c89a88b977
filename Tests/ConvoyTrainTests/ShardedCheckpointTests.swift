import ConvoyComm
import ConvoyNN
import ConvoyParallel
import ConvoyTensor
import ConvoyTrain
import Foundation
import Testing

/// A parallel layout of the resharding matrix.
struct CheckpointLayout: CustomStringConvertible, Sendable {
    var description: String
    var ranks: Int
    var zeroStage = 0
    var pp = 1
    var schedule = "1f1b"
    var virtualStages = 1
    var accumulate = 1
    var tp = 1
    var sequenceParallel = false

    func apply(to configuration: inout TrainingConfiguration) throws {
        configuration.dp = nil
        configuration.zeroStage = zeroStage
        configuration.accumulateSteps = accumulate
        try TrainingSettings.applyFlag("--pp", String(pp), to: &configuration)
        try TrainingSettings.applyFlag("--schedule", schedule, to: &configuration)
        try TrainingSettings.applyFlag("--virtual-stages", String(virtualStages), to: &configuration)
        try TrainingSettings.applyFlag("--tp", String(tp), to: &configuration)
        try TrainingSettings.applyFlag("--sequence-parallel", String(sequenceParallel), to: &configuration)
    }

    static let all: [CheckpointLayout] = [CheckpointLayout(description: "1 rank", ranks: 1)]
        + [2, 4].flatMap { dp in (0...3).map { CheckpointLayout(description: "dp \(dp) ZeRO-\($0)", ranks: dp, zeroStage: $0) } }
        + [CheckpointLayout(description: "pp 2 1F1B", ranks: 2, pp: 2, accumulate: 2),
           CheckpointLayout(description: "pp 2 interleaved", ranks: 2, pp: 2, schedule: "interleaved-1f1b", virtualStages: 2, accumulate: 2),
           CheckpointLayout(description: "pp 2 × dp 2 ZeRO-1", ranks: 4, zeroStage: 1, pp: 2, accumulate: 2),
           CheckpointLayout(description: "pp 2 × dp 2 ZeRO-2", ranks: 4, zeroStage: 2, pp: 2, accumulate: 2),
           CheckpointLayout(description: "tp 2", ranks: 2, tp: 2),
           CheckpointLayout(description: "tp 2 × dp 2 ZeRO-1", ranks: 4, zeroStage: 1, tp: 2),
           CheckpointLayout(description: "tp 2 sequence parallel", ranks: 2, tp: 2, sequenceParallel: true),
           CheckpointLayout(description: "tp 2 × pp 2", ranks: 4, pp: 2, accumulate: 2, tp: 2),
           CheckpointLayout(description: "tp 2 × dp 2 ZeRO-3", ranks: 4, zeroStage: 3, tp: 2)]
}

@Suite(.serialized) struct ShardedCheckpointTests {
    init() { CommunicationTimeout.set(60) }

    /// Four layers (pp 2 × v 2 has a layer per chunk), SGD with momentum (its state must move too), dropout on.
    func configuration(output: String, steps: Int = 6) throws -> TrainingConfiguration {
        var configuration = try tinyConfiguration(output: output, steps: steps)
        configuration.layers = 4
        configuration.optimizer = "momentum"
        configuration.learningRate = 0.05
        configuration.dropout = 0.1
        return configuration
    }

    func relativeError(_ a: [[Float]], _ b: [[Float]]) -> Float {
        zip(a, b).map { x, y in zip(x, y).map { abs($0 - $1) }.max()! / max(x.map(abs).max()!, 1e-6) }.max()!
    }

    /// Trains `configuration` under `layout` (resuming from `checkpoint` when given); rank 0's whole model after
    /// the run and the step it started from.
    func train(_ configuration: TrainingConfiguration, under layout: CheckpointLayout, resume checkpoint: String? = nil) throws -> (weights: [[Float]], firstStep: Int) {
        var configured = configuration
        try layout.apply(to: &configured)
        let frozen = configured
        guard layout.ranks > 1 else {
            let trainer = try Trainer(configuration: frozen, resume: checkpoint)
            _ = try trainer.run()
            return (weights(trainer.model), trainer.firstStep)
        }
        let results = try LocalWorld.run(size: layout.ranks, threadsPerRank: 1) { group -> ([[Float]], Int) in
            let trainer = try Trainer(configuration: frozen, group: group, resume: checkpoint)
            _ = try trainer.run()
            // Rank 0 holds the whole model after run() (pipelines collect it there).
            return (group.rank == 0 ? weights(trainer.model) : [], trainer.firstStep)
        }
        return results[0]
    }

    /// Saved under layout A at step 3 of 6, resumed under every layout B: each continues to the weights of an
    /// uninterrupted one-process run (≤ 1e-5 relative), and to A's own uninterrupted weights bit for bit when
    /// B = A.
    @Test(arguments: CheckpointLayout.all)
    func aCheckpointSavedUnderOneLayoutResumesUnderEveryLayout(saved: CheckpointLayout) throws {
        let root = scratchDirectory("reshard")
        defer { try? FileManager.default.removeItem(atPath: root) }
        let reference = try train(try configuration(output: root + "/reference"), under: CheckpointLayout.all[0]).weights
        var straight = try configuration(output: root + "/straight")
        straight.checkpointEvery = 3
        let uninterrupted = try train(straight, under: saved).weights
        #expect(relativeError(uninterrupted, reference) <= 1e-5, "\(saved) uninterrupted against one process")
        let checkpoint = root + "/straight/checkpoint"
        #expect(try CheckpointVerifier.verify(directory: checkpoint).tensors > 0)
        for (index, resumed) in CheckpointLayout.all.enumerated() {
            var continued = try configuration(output: root + "/resumed-\(index)")
            continued.checkpointEvery = 0
            let result = try train(continued, under: resumed, resume: checkpoint)
            #expect(result.firstStep == 3)
            let error = relativeError(result.weights, reference)
            #expect(error <= 1e-5, "saved under \(saved), resumed under \(resumed): relative error \(error)")
            if resumed.description == saved.description {
                #expect(result.weights == uninterrupted, "saved and resumed under \(saved): must be bit-identical")
            }
        }
    }

    /// Each rank writes only what it owns: under ZeRO every rank's file holds its shards (about 1/dp of the
    /// model), replicated tensors under DDP are spread over the replicas, and every element is stored once.
    @Test func ranksWriteTheirOwnPiecesAndEveryElementOnce() throws {
        let root = scratchDirectory("pieces")
        defer { try? FileManager.default.removeItem(atPath: root) }
        for layout in [CheckpointLayout.all[2], CheckpointLayout.all[5]] {  // dp 2 ZeRO-1, dp 4 ZeRO-0
            var configuration = try configuration(output: root + "/\(layout.ranks)-\(layout.zeroStage)", steps: 2)
            configuration.checkpointEvery = 1
            _ = try train(configuration, under: layout)
            let directory = configuration.finalCheckpointDirectory
            let report = try CheckpointVerifier.verify(directory: directory)
            let index = try CheckpointIndex.read(from: directory)
            #expect(report.files == layout.ranks, "\(layout): every rank wrote a file")
            let perFile = Dictionary(grouping: index.tensors.values.flatMap(\.pieces), by: \.file).mapValues { $0.reduce(0) { $0 + $1.byteEnd - $1.byteStart } }
            let share = Double(index.storedBytes) / Double(layout.ranks)
            for (file, bytes) in perFile {
                #expect(Double(bytes) <= share * 1.6, "\(layout): \(file) holds \(bytes) bytes, an even share is \(share)")
            }
            #expect(index.samples == 2 * configuration.batch && index.step == 2)
        }
    }

    /// A corrupted piece, a missing file and an index that does not cover a tensor each give an error naming the
    /// file and the tensor; the checkpoint's files are left exactly as they were.
    @Test func damagedCheckpointsAreRefusedNamingFileAndTensor() throws {
        let root = scratchDirectory("damaged")
        defer { try? FileManager.default.removeItem(atPath: root) }
        var configuration = try configuration(output: root + "/run", steps: 2)
        configuration.checkpointEvery = 1
        _ = try train(configuration, under: CheckpointLayout.all[2])
        let checkpoint = configuration.finalCheckpointDirectory
        let index = try CheckpointIndex.read(from: checkpoint)
        let tensor = "h.1.attn.c_attn.weight"
        let piece = try #require(index.tensors[tensor]?.pieces.first)
        var resumed = try self.configuration(output: root + "/resumed", steps: 3)
        resumed.checkpointEvery = 0
        func snapshot() throws -> [String: Data] {
            Dictionary(uniqueKeysWithValues: try FileManager.default.contentsOfDirectory(atPath: checkpoint).map { ($0, try Data(contentsOf: URL(fileURLWithPath: checkpoint + "/" + $0))) })
        }
        func refusal() -> String {
            do { _ = try Trainer(configuration: resumed, resume: checkpoint); return "" } catch { return "\(error)" }
        }

        // A flipped byte inside one piece.
        let path = checkpoint + "/" + piece.file
        let original = try Data(contentsOf: URL(fileURLWithPath: path))
        var corrupted = original
        corrupted[piece.byteStart + 5] ^= 0x40
        try corrupted.write(to: URL(fileURLWithPath: path))
        var before = try snapshot()
        var message = refusal()
        #expect(message.contains(piece.file) && message.contains(tensor) && message.contains("corrupted"), "\(message)")
        #expect(try snapshot() == before)
        #expect(throws: ConvoyError.self) { try CheckpointVerifier.verify(directory: checkpoint) }
        try original.write(to: URL(fileURLWithPath: path))

        // A missing rank file.
        try FileManager.default.moveItem(atPath: path, toPath: root + "/aside")
        before = try snapshot()
        message = refusal()
        #expect(message.contains(piece.file) && message.contains("'"), "\(message)")
        #expect(try snapshot() == before)
        try FileManager.default.moveItem(atPath: root + "/aside", toPath: path)

        // An index that lost a piece of a tensor.
        var partial = index
        partial.tensors[tensor]!.pieces.removeFirst()
        let indexPath = checkpoint + "/" + CheckpointIndex.fileName
        let goodIndex = try Data(contentsOf: URL(fileURLWithPath: indexPath))
        try partial.encoded().write(to: URL(fileURLWithPath: indexPath))
        before = try snapshot()
        message = refusal()
        #expect(message.contains(tensor) && message.contains("does not cover") && message.contains(CheckpointIndex.fileName), "\(message)")
        #expect(try snapshot() == before)
        try goodIndex.write(to: URL(fileURLWithPath: indexPath))
        #expect(try Trainer(configuration: resumed, resume: checkpoint).firstStep == 2)
    }

    /// A save that fails at any stage (after the ranks wrote their pieces, or before the rename) leaves the
    /// previous checkpoint loadable and no temporary behind; a directory without an index (a save killed
    /// before its end) is refused as incomplete.
    @Test func aFailedShardedSaveLeavesThePreviousCheckpoint() throws {
        let root = scratchDirectory("failed-save")
        defer { try? FileManager.default.removeItem(atPath: root) }
        let configuration = try configuration(output: root + "/run", steps: 4)
        var layout = configuration
        try CheckpointLayout.all[3].apply(to: &layout)  // dp 2 ZeRO-2
        let frozen = layout
        let directory = root + "/checkpoint"
        _ = try LocalWorld.run(size: 2, threadsPerRank: 1) { group -> Int in
            let trainer = try Trainer(configuration: frozen, group: group)
            _ = try trainer.trainStep(0)
            try trainer.saveCheckpoint(afterStep: 1, to: directory)
            _ = try trainer.trainStep(1)
            for stage in [TrainingCheckpoint.SaveStage.afterPieces, .beforeRename] {
                do {
                    try trainer.saveCheckpoint(afterStep: 2, to: directory, failingAt: stage)
                    Issue.record("the simulated failure must surface")
                } catch {}
            }
            return 0
        }
        #expect(try CheckpointIndex.read(from: directory).step == 1)
        #expect(try CheckpointVerifier.verify(directory: directory).files == 2)
        #expect(try FileManager.default.contentsOfDirectory(atPath: root).allSatisfy { !$0.contains(".tmp-") })
        try FileManager.default.removeItem(atPath: directory + "/" + CheckpointIndex.fileName)
        #expect(throws: ConvoyError.self) { try CheckpointIndex.read(from: directory) }
    }

    /// The global batch stays the checkpoint's: a new data-parallel size gets accumulation steps that split it
    /// (the per-rank micro-batch kept where possible), and one that cannot split it is refused saying what to
    /// change.
    @Test func aNewDataParallelSizeKeepsTheGlobalBatch() throws {
        let root = scratchDirectory("accumulation")
        defer { try? FileManager.default.removeItem(atPath: root) }
        var saved = try configuration(output: root + "/run", steps: 2)
        saved.accumulateSteps = 4
        _ = try Trainer(configuration: saved).run()
        var resumed = saved
        resumed.output = root + "/resumed"
        resumed.steps = 3
        resumed.dp = 4
        let frozen = resumed
        let accumulation = try LocalWorld.run(size: 4, threadsPerRank: 1) { group -> Int in
            let trainer = try Trainer(configuration: frozen, group: group, resume: root + "/run/final")
            #expect(trainer.firstStep == 2 && trainer.configuration.batch == 8)
            return trainer.configuration.accumulateSteps
        }
        #expect(accumulation == [2, 2, 2, 2])
        var uneven = resumed
        uneven.dp = 3
        let frozenUneven = uneven
        do {
            _ = try LocalWorld.run(size: 3, threadsPerRank: 1) { group in try Trainer(configuration: frozenUneven, group: group, resume: root + "/run/final") }
            Issue.record("a global batch of 8 cannot be split over 3 ranks")
        } catch {
            #expect("\(error)".contains("--dp") && "\(error)".contains("8"), "\(error)")
        }
    }

    /// Export to a Hugging Face directory reads the same weights as the run's final export, and an imported
    /// Hugging Face directory starts a run from those weights.
    @Test func exportAndImportRoundTrip() throws {
        let root = scratchDirectory("export")
        defer { try? FileManager.default.removeItem(atPath: root) }
        let configuration = try configuration(output: root + "/run", steps: 2)
        _ = try train(configuration, under: CheckpointLayout.all[4])  // dp 2 ZeRO-3
        let final = configuration.finalCheckpointDirectory
        let exported = try GPTCheckpoint.load(from: final)
        let reader = try ShardedCheckpointReader(directory: final)
        for (name, parameter) in exported.namedParameters() {
            #expect(try reader.readWhole(name).toArray() == parameter.toArray(), "\(name)")
        }
        try TrainingCheckpoint.save(model: exported, optimizer: nil,
                                    state: TrainerState(step: 0, seed: 0, dataPosition: 0, configuration: "", optimizer: TrainerState.weightsOnly),
                                    to: root + "/imported", exportWeights: false)
        var fresh = configuration
        fresh.output = root + "/fresh"
        fresh.seed = 99
        let trainer = try Trainer(configuration: fresh, resume: root + "/imported")
        #expect(trainer.firstStep == 0)
        #expect(weights(trainer.model) == weights(exported))
    }
}
