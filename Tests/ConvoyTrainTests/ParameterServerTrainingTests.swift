import ConvoyComm
import ConvoyNN
import ConvoyParallel
import ConvoyTensor
import ConvoyTrain
import Foundation
import Testing

/// What a rank holds after a CTR run: worker 0's dense parameters, or a server's (or one process's) table rows.
struct ClickThroughParameters: Sendable {
    var dense: [[Float]] = []
    /// table → id → row.
    var rows: [Int: [Int32: [Float]]] = [:]
    var summary: ClickThroughSummary?

    init(_ trainer: ClickThroughTrainer, summary: ClickThroughSummary) {
        self.summary = summary
        if !trainer.isServer && (trainer.workerIndex ?? 0) == 0 { dense = trainer.model.parameters.map { $0.toArray() } }
        for table in trainer.tables {
            let values = table.values.toArray()
            var byID: [Int32: [Float]] = [:]
            for row in 0..<table.localRows {
                byID[Int32(row * table.shardCount + table.shardIndex)] = Array(values[(row * table.width)..<((row + 1) * table.width)])
            }
            rows[table.table] = byID
        }
    }

    init() {}

    static func merged(_ parts: [ClickThroughParameters]) -> ClickThroughParameters {
        var result = ClickThroughParameters()
        for part in parts {
            if !part.dense.isEmpty { result.dense = part.dense }
            for (table, rows) in part.rows { result.rows[table, default: [:]].merge(rows) { $1 } }
        }
        return result
    }

    /// The largest relative difference (per tensor or table, against its largest magnitude).
    func relativeError(to other: ClickThroughParameters) -> Float {
        var worst: Float = 0
        for (a, b) in zip(dense, other.dense) {
            worst = max(worst, zip(a, b).map { abs($0 - $1) }.max()! / max(a.map(abs).max()!, 1e-6))
        }
        for (table, rows) in rows {
            let scale = max(rows.values.flatMap { $0 }.map(abs).max() ?? 0, 1e-6)
            for (id, row) in rows {
                guard let theirs = other.rows[table]?[id] else { return .infinity }
                worst = max(worst, zip(row, theirs).map { abs($0 - $1) }.max()! / scale)
            }
        }
        return worst
    }
}

func clickConfiguration(output: String, steps: Int = 5) -> TrainingConfiguration {
    var configuration = TrainingConfiguration()
    configuration.model = "ctr"
    configuration.output = output
    configuration.ctrVocabulary = [60]
    configuration.ctrEmbeddingWidth = 4
    configuration.ctrHidden = 16
    configuration.ctrValidation = 64
    configuration.batch = 12
    configuration.steps = steps
    configuration.optimizer = "sgd"
    configuration.learningRate = 0.2
    configuration.minLearningRate = 0
    configuration.schedule = "constant"
    configuration.logEvery = 1
    configuration.threads = 1
    return configuration
}

/// Trains on Local ranks (W workers + S servers) and returns every rank's parameters.
func trainClickThrough(_ configuration: TrainingConfiguration, ranks: Int, dataset: (any ClickDataset)? = nil,
                       stepHook: (@Sendable (Int, Int) -> Void)? = nil) throws -> [ClickThroughParameters] {
    try LocalWorld.run(size: ranks, threadsPerRank: 1) { group in
        let trainer = try ClickThroughTrainer(configuration: configuration, world: group, dataset: dataset, stepHook: stepHook)
        return ClickThroughParameters(trainer, summary: try trainer.run())
    }
}

@Suite(.serialized) struct ParameterServerTrainingTests {
    init() { CommunicationTimeout.set(60) }

    /// BSP (staleness 0) with S servers and W workers trains the same model as one process given the same
    /// global batch: dense MLP and every table row within 1e-5 (relative), with the dense parameters on the
    /// servers (ps) or all-reduced among the workers (hybrid).
    @Test(arguments: [1, 2], [1, 2, 3])
    func bulkSynchronousTrainingMatchesOneProcess(servers: Int, workers: Int) throws {
        let single = scratchDirectory("ps-single"), parallel = scratchDirectory("ps-parallel")
        defer { for path in [single, parallel] { try? FileManager.default.removeItem(atPath: path) } }
        let reference = clickConfiguration(output: single)
        let one = try ClickThroughTrainer(configuration: reference)
        let expected = ClickThroughParameters(one, summary: try one.run())
        #expect(expected.summary?.validationAUC != nil)
        for comm in ["ps", "hybrid"] {
            var distributed = reference
            distributed.output = parallel
            distributed.overwrite = true
            distributed.psServers = servers
            distributed.dp = workers
            distributed.comm = comm
            let result = ClickThroughParameters.merged(try trainClickThrough(distributed, ranks: workers + servers))
            #expect(result.rows.count == 26 && result.dense.count == one.model.parameters.count)
            let error = expected.relativeError(to: result)
            #expect(error <= 1e-5, "S=\(servers) W=\(workers) \(comm): relative error \(error)")
        }
    }

    /// Without servers, `--comm allreduce` over W workers all-reduces every table whole and the dense MLP:
    /// again one process's result.
    @Test(arguments: [2, 3])
    func allReduceTrainingMatchesOneProcess(workers: Int) throws {
        let single = scratchDirectory("ar-single"), parallel = scratchDirectory("ar-parallel")
        defer { for path in [single, parallel] { try? FileManager.default.removeItem(atPath: path) } }
        let reference = clickConfiguration(output: single)
        let one = try ClickThroughTrainer(configuration: reference)
        let expected = ClickThroughParameters(one, summary: try one.run())
        var distributed = reference
        distributed.output = parallel
        distributed.dp = workers
        distributed.comm = "allreduce"
        distributed.evalEvery = 2
        let results = try trainClickThrough(distributed, ranks: workers)
        // Every worker holds every table; compare worker 0's.
        let mine = results[0]
        let error = expected.relativeError(to: mine)
        #expect(mine.rows.count == 26 && error <= 1e-5, "W=\(workers): relative error \(error)")
        let metrics = try String(contentsOfFile: parallel + "/metrics.jsonl", encoding: .utf8)
        #expect(metrics.split(separator: "\n").filter { $0.contains("val_auc") }.count == 3)
    }

    /// `[[placement]]` names the server (world rank 0, so the workers are ranks 1 and 2) and keeps the last
    /// layer's dense parameters on it while the rest is all-reduced (`--comm hybrid`): still one process's result.
    @Test func placementChoosesTheServerAndPerModuleSynchronisation() throws {
        let single = scratchDirectory("ps-place-single"), parallel = scratchDirectory("ps-place")
        defer { for path in [single, parallel] { try? FileManager.default.removeItem(atPath: path) } }
        let reference = clickConfiguration(output: single)
        let one = try ClickThroughTrainer(configuration: reference)
        let expected = ClickThroughParameters(one, summary: try one.run())
        var placed = reference
        placed.output = parallel
        placed.dp = 2
        try TrainingSettings.apply(toml: """
            [[placement]]
            role = "server"
            devices = "cpu:0"
            [[placement]]
            modules = "mlp.2"
            comm = "ps"
            """, source: "placement.toml", to: &placed)
        try placed.validate()
        #expect(try placed.serverCount == 1 && placed.denseSynchronisation(of: "mlp.2.weight") == "ps" && placed.denseSynchronisation(of: "mlp.0.bias") == "allreduce")
        #expect(TrainingSettings.tomlText(placed).contains("role = \"server\""))
        let results = try trainClickThrough(placed, ranks: 3)
        #expect(results[0].summary?.role == "server 0" && results[1].summary?.role == "worker 0")
        let error = expected.relativeError(to: ClickThroughParameters.merged(results))
        #expect(error <= 1e-5, "relative error \(error)")
    }

    /// SSP with K = 2 and one worker slowed down: every pull the servers answered (the instrumented clocks)
    /// had the pulling worker at most 2 steps ahead of the slowest, and so did what the workers report.
    @Test func stalenessBoundHoldsWithASlowWorker() throws {
        let output = scratchDirectory("ps-ssp")
        defer { try? FileManager.default.removeItem(atPath: output) }
        var configuration = clickConfiguration(output: output, steps: 12)
        configuration.psServers = 2
        configuration.dp = 3
        configuration.staleness = "2"
        // Dense parameters on the servers too: nothing else keeps the workers in step.
        configuration.comm = "ps"
        let results = try trainClickThrough(configuration, ranks: 5) { worker, _ in
            if worker == 2 { usleep(3000) }  // slows worker 2 down; correctness never depends on it
        }
        let servers = results.compactMap { $0.summary?.server }
        #expect(servers.count == 2)
        for statistics in servers {
            #expect(statistics.servedPulls.count >= 3 * 12)
            for pull in statistics.servedPulls { #expect(pull.clock - pull.slowestClock <= 2, "\(pull)") }
            #expect(statistics.maxStaleness <= 2)
            #expect(statistics.clocks == [12, 12, 12])
        }
        for summary in results.compactMap(\.summary) where summary.role.hasPrefix("worker") { #expect(summary.maxStalenessObserved <= 2) }
    }

    /// ASP reaches an AUC within 0.01 of BSP's on generated data.
    @Test func asynchronousTrainingReachesTheSynchronousAUC() throws {
        let output = scratchDirectory("ps-asp")
        defer { try? FileManager.default.removeItem(atPath: output) }
        var configuration = clickConfiguration(output: output, steps: 150)
        configuration.batch = 64
        configuration.ctrVocabulary = [100]
        configuration.ctrValidation = 2000
        configuration.optimizer = "adagrad"
        configuration.learningRate = 0.05
        configuration.psServers = 1
        configuration.dp = 2
        configuration.comm = "ps"
        configuration.overwrite = true
        var aucs: [String: Double] = [:]
        for staleness in ["0", "inf"] {
            configuration.staleness = staleness
            let results = try trainClickThrough(configuration, ranks: 3)
            aucs[staleness] = results.compactMap { $0.summary?.validationAUC }.first
        }
        let bsp = try #require(aucs["0"]), asp = try #require(aucs["inf"])
        #expect(bsp > 0.6, "BSP should learn something: AUC \(bsp)")
        #expect(abs(bsp - asp) <= 0.01, "BSP AUC \(bsp), ASP AUC \(asp)")
    }

    /// Under BSP, 3 steps + resume to 6 equals 6 steps straight, bit for bit (Adagrad, so row state matters),
    /// even when the resumed run has a different number of servers than the one that saved.
    @Test func resumingUnderBSPIsBitIdenticalWithAnotherServerCount() throws {
        let straight = scratchDirectory("ps-straight"), first = scratchDirectory("ps-first"), second = scratchDirectory("ps-second")
        defer { for path in [straight, first, second] { try? FileManager.default.removeItem(atPath: path) } }
        var configuration = clickConfiguration(output: straight, steps: 6)
        configuration.psServers = 2
        configuration.dp = 2
        configuration.optimizer = "adagrad"
        configuration.learningRate = 0.05
        let expected = ClickThroughParameters.merged(try trainClickThrough(configuration, ranks: 4))
        var half = configuration
        half.output = first
        half.steps = 3
        _ = try trainClickThrough(half, ranks: 4)
        var resumed = configuration
        resumed.output = second
        resumed.psServers = 1
        let checkpoint = half.finalCheckpointDirectory
        let frozen = resumed
        let result = ClickThroughParameters.merged(try LocalWorld.run(size: 3, threadsPerRank: 1) { group in
            let trainer = try ClickThroughTrainer(configuration: frozen, world: group, resume: checkpoint)
            #expect(trainer.startStep == 3)
            return ClickThroughParameters(trainer, summary: try trainer.run())
        })
        #expect(expected.relativeError(to: result) == 0)
        var otherSeed = resumed
        otherSeed.seed += 1
        otherSeed.psServers = 0
        otherSeed.dp = nil
        let error = #expect(throws: ConvoyError.self) { _ = try ClickThroughTrainer(configuration: otherSeed, resume: checkpoint) }
        #expect("\(error!)".contains("resume with the same seed"))
    }

    /// A checkpoint of a PS run is a sharded checkpoint written by every server (its table shards as row-strided
    /// pieces) and worker 0 (the all-reduced dense state); the verifier accepts it, and
    /// `ClickThroughCheckpoint.load` reassembles the tables whole, equal to the run's.
    @Test func checkpointShardsReassembleForAnotherServerCount() throws {
        let output = scratchDirectory("ps-checkpoint")
        defer { try? FileManager.default.removeItem(atPath: output) }
        var configuration = clickConfiguration(output: output)
        configuration.psServers = 2
        configuration.dp = 2
        configuration.optimizer = "adam"
        configuration.learningRate = 0.01
        let trained = ClickThroughParameters.merged(try trainClickThrough(configuration, ranks: 4))
        let directory = configuration.finalCheckpointDirectory
        let report = try CheckpointVerifier.verify(directory: directory)
        #expect(report.files == 3)
        let index = try CheckpointIndex.read(from: directory)
        #expect(index.tensors[ParameterServerCheckpoint.tableName(0)]!.pieces.map(\.rowStride) == [2, 2])
        // Adam keeps m and v per element and the row's own step count.
        #expect(index.tensors["optimizer/row_state/" + ParameterServerCheckpoint.tableName(0)]!.shape == [60, 2 * 4 + 1])
        #expect(index.step == 5)
        let loaded = try ClickThroughCheckpoint.load(from: directory)
        var reassembled = ClickThroughParameters()
        reassembled.dense = loaded.model.parameters.map { $0.toArray() }
        for table in loaded.tables {
            let values = table.values.toArray()
            reassembled.rows[table.table] = Dictionary(uniqueKeysWithValues: (0..<table.rows).map { (Int32($0), Array(values[($0 * table.width)..<(($0 + 1) * table.width)])) })
        }
        #expect(trained.relativeError(to: reassembled) == 0)
        let metrics = try String(contentsOfFile: output + "/metrics.jsonl", encoding: .utf8)
        #expect(metrics.split(separator: "\n").filter { $0.contains("\"loss\"") }.count == 5)
    }
}

/// Periodic checkpoints of CTR runs (`--checkpoint-every`), and the ranks' agreement on the configuration.
@Suite(.serialized) struct ClickThroughCheckpointTests {
    init() { CommunicationTimeout.set(60) }

    /// BSP, 2 servers + 2 workers, Adagrad, checkpoints every 2 of 6 steps: saving changes nothing; the periodic
    /// checkpoint (replaced at step 4, as GPT's is) verifies, holds the run's layout and resumes to step 6 bit
    /// for bit with 1 server; and one process (no servers) resumes it through the same reader within 1e-5.
    @Test(arguments: ["ps", "hybrid"])
    func periodicCheckpointsResumeBitIdenticallyUnderBSP(comm: String) throws {
        let straight = scratchDirectory("ctr-straight"), periodic = scratchDirectory("ctr-periodic")
        let resumed = scratchDirectory("ctr-resumed"), single = scratchDirectory("ctr-single")
        defer { for path in [straight, periodic, resumed, single] { try? FileManager.default.removeItem(atPath: path) } }
        var configuration = clickConfiguration(output: straight, steps: 6)
        configuration.psServers = 2
        configuration.dp = 2
        configuration.comm = comm
        configuration.optimizer = "adagrad"
        configuration.learningRate = 0.05
        let expected = ClickThroughParameters.merged(try trainClickThrough(configuration, ranks: 4))

        var saving = configuration
        saving.output = periodic
        saving.checkpointEvery = 2
        #expect(expected.relativeError(to: ClickThroughParameters.merged(try trainClickThrough(saving, ranks: 4))) == 0)
        let checkpoint = saving.periodicCheckpointDirectory
        let index = try CheckpointIndex.read(from: checkpoint)
        #expect(index.step == 4 && index.samples == 4 * configuration.batch && index.ranks == 4)
        #expect(index.layout.contains("2 servers"))
        _ = try CheckpointVerifier.verify(directory: checkpoint)
        // The dense MLP's largest matrix is pieced by both servers under ps, written whole by worker 0 under hybrid.
        let firstDense = index.names(of: .parameter).filter { $0.hasPrefix("mlp.") }.max { index.tensors[$0]!.count < index.tensors[$1]!.count }!
        let denseFiles = Set(index.tensors[firstDense]!.pieces.map(\.file))
        #expect(denseFiles.count == (comm == "ps" ? 2 : 1))

        var oneServer = configuration
        oneServer.output = resumed
        oneServer.psServers = 1
        let frozen = oneServer
        let result = ClickThroughParameters.merged(try LocalWorld.run(size: 3, threadsPerRank: 1) { group in
            let trainer = try ClickThroughTrainer(configuration: frozen, world: group, resume: checkpoint)
            #expect(trainer.startStep == 4)
            return ClickThroughParameters(trainer, summary: try trainer.run())
        })
        #expect(expected.relativeError(to: result) == 0)
        let metrics = try String(contentsOfFile: resumed + "/metrics.jsonl", encoding: .utf8)
        #expect(metrics.split(separator: "\n").filter { $0.contains("\"loss\"") }.map { $0.contains("\"step\":5") || $0.contains("\"step\":6") } == [true, true])

        guard comm == "hybrid" else { return }
        var alone = configuration
        alone.output = single
        alone.psServers = 0
        alone.dp = nil
        let trainer = try ClickThroughTrainer(configuration: alone, resume: checkpoint)
        #expect(trainer.startStep == 4)
        let one = ClickThroughParameters(trainer, summary: try trainer.run())
        #expect(expected.relativeError(to: one) <= 1e-5)
    }

    /// A rank started with different flags (here a server's learning rate) is refused on every rank before
    /// training, the message naming the key and the ranks; nothing is written.
    @Test func ranksWithDifferentConfigurationsAreRefused() throws {
        let output = scratchDirectory("ctr-disagree")
        defer { try? FileManager.default.removeItem(atPath: output) }
        var configuration = clickConfiguration(output: output)
        configuration.psServers = 1
        configuration.dp = 2
        let frozen = configuration
        let error = #expect(throws: ConvoyError.self) {
            _ = try LocalWorld.run(size: 3, threadsPerRank: 1) { group in
                var mine = frozen
                if group.rank == 2 { mine.learningRate = 0.5 }
                return try ClickThroughTrainer(configuration: mine, world: group).run().steps
            }
        }
        #expect("\(error!)".contains("training.lr") && "\(error!)".contains("rank 2 has"))
        #expect(!FileManager.default.fileExists(atPath: output))
    }
}

/// Examples of another dataset with one id replaced.
private struct CorruptedClickDataset: ClickDataset {
    let inner: SyntheticClickDataset
    let badID: Int32
    var summary: String { "corrupted" }
    var vocabularySizes: [Int] { inner.vocabularySizes }
    var denseFeatures: Int { inner.denseFeatures }
    var validationExamples: [ClickExample] { inner.validationExamples }
    var bestAchievableAUC: Double? { nil }
    func trainingExample(_ index: Int) -> ClickExample {
        var example = inner.trainingExample(index)
        if index == 5 { example.ids[3] = badID }
        return example
    }
}

@Suite(.serialized) struct ParameterServerBadInputTests {
    init() { CommunicationTimeout.set(60) }

    @Test(arguments: [Int32(-1), Int32(60), Int32(1000)])
    func idsOutsideTheTableAreRefusedBeforeAnythingIsWritten(bad: Int32) throws {
        let output = scratchDirectory("ps-bad-id")
        defer { try? FileManager.default.removeItem(atPath: output) }
        var configuration = clickConfiguration(output: output)
        configuration.psServers = 1
        configuration.dp = 2
        let dataset = CorruptedClickDataset(inner: try SyntheticClickDataset(seed: configuration.seed, vocabularySizes: configuration.ctrVocabularySizes, validationCount: 64), badID: bad)
        let error = #expect(throws: ConvoyError.self) { _ = try trainClickThrough(configuration, ranks: 3, dataset: dataset) }
        #expect("\(error!)".contains("id \(bad) of categorical feature 3 is outside its table's rows 0..<60"))
        #expect(!FileManager.default.fileExists(atPath: output))
    }

    @Test func aCriteoRowWithTheWrongFieldCountNamesItsLine() throws {
        let output = scratchDirectory("ps-bad-tsv")
        let file = output + "-data.tsv"
        defer { for path in [output, file] { try? FileManager.default.removeItem(atPath: path) } }
        let good = (["1"] + (1...13).map(String.init) + (1...26).map { String($0 * 7919, radix: 16) }).joined(separator: "\t")
        let missing = (["0"] + Array(repeating: "", count: 13) + Array(repeating: "", count: 26)).joined(separator: "\t")
        let short = (["0"] + (1...13).map(String.init) + (1...25).map { String($0, radix: 16) }).joined(separator: "\t")
        try [good, missing, good, short].joined(separator: "\n").write(toFile: file, atomically: true, encoding: .utf8)
        var configuration = clickConfiguration(output: output)
        configuration.dataPath = file
        let error = #expect(throws: ConvoyError.self) { _ = try ClickThroughTrainer(configuration: configuration) }
        #expect("\(error!)".contains("line 4 has 39 tab-separated fields; a Criteo row has 40"))
        #expect(!FileManager.default.fileExists(atPath: output))
        // Missing fields are allowed: the first three lines read.
        try [good, missing, good].joined(separator: "\n").write(toFile: file, atomically: true, encoding: .utf8)
        let examples = try CriteoTSVReader.read(path: file, vocabularySizes: Array(repeating: 60, count: 26))
        #expect(examples.count == 3 && examples[1].ids == Array(repeating: 0, count: 26) && examples[1].dense == Array(repeating: 0, count: 13))
        #expect(examples[0].ids.allSatisfy { $0 >= 1 && $0 < 60 })
    }

    @Test func asManyServersAsRanksIsRefused() throws {
        #expect(throws: ConvoyError.self) { _ = try ParameterServerRoles(worldSize: 2, servers: 2) }
        let output = scratchDirectory("ps-too-many-servers")
        defer { try? FileManager.default.removeItem(atPath: output) }
        var configuration = clickConfiguration(output: output)
        configuration.psServers = 3
        let frozen = configuration
        let error = #expect(throws: ConvoyError.self) {
            _ = try LocalWorld.run(size: 3) { group in try ClickThroughTrainer(configuration: frozen, world: group).isServer }
        }
        #expect("\(error!)".contains("--ps-servers 3 leaves no worker in a world of 3 ranks"))
        #expect(!FileManager.default.fileExists(atPath: output))
    }

    @Test func negativeStalenessIsRefused() throws {
        var configuration = TrainingConfiguration()
        let error = #expect(throws: ConvoyError.self) { try TrainingSettings.applyFlag("--staleness", "-1", to: &configuration) }
        #expect("\(error!)".contains("staleness -1 is negative; use 0 (BSP), a positive K (SSP) or inf (ASP)"))
        try TrainingSettings.applyFlag("--staleness", "inf", to: &configuration)
        #expect(try configuration.parsedStaleness() == .unbounded)
        try TrainingSettings.apply(toml: "[parallel.ps]\nstaleness = 2\nservers = 1\ncomm = \"ps\"\n", source: "test.toml", to: &configuration)
        #expect(configuration.staleness == "2" && configuration.psServers == 1 && configuration.comm == "ps")
    }
}
