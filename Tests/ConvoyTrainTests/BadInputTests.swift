import ConvoyNN
import ConvoyParallel
import ConvoyTensor
import ConvoyTrain
import Foundation
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// Every failure is an error with a message (never a trap or a silent wrong result), and every sized input
/// has a bound.
@Suite(.serialized) struct BadInputTests {
    func message(_ body: () throws -> Void) -> String {
        do { try body() } catch { return "\(error)" }
        return "(no error)"
    }

    @Test func aFullDiskOnMetricsIsAnErrorNamingTheFile() throws {
        let output = scratchDirectory("full-metrics")
        defer { try? FileManager.default.removeItem(atPath: output) }
        try FileManager.default.createDirectory(atPath: output, withIntermediateDirectories: true)
        try FileManager.default.createSymbolicLink(atPath: output + "/metrics.jsonl", withDestinationPath: "/dev/full")
        let log = try MetricsLog(directory: output)
        let text = message { try log.write(["step": 1, "loss": 2.0]) }
        #expect(text.contains(output + "/metrics.jsonl") && text.contains("No space left"), "\(text)")
    }

    @Test(arguments: [
        [("--layers", "256"), ("--d-model", "65536"), ("--heads", "64")],
        [("--context", "1048576"), ("--batch", "8")],
    ])
    func aRunThatCannotFitInMemoryIsRefusedBeforeAllocating(_ flags: [(String, String)]) throws {
        let output = scratchDirectory("too-big")
        defer { try? FileManager.default.removeItem(atPath: output) }
        let configuration = try TrainingSettings.resolve(configFile: nil, flags: flags + [("--output", output), ("--steps", "1")])
        let live = TensorAllocator.shared.liveBytes
        let text = message { _ = try Trainer(configuration: configuration) }
        #expect(text.contains("needs at least") && text.contains("GiB") && text.contains("--batch"), "\(text)")
        // Refused from the plan: the model was never built.
        #expect(TensorAllocator.shared.liveBytes - live < 1 << 20)
        #expect(!FileManager.default.fileExists(atPath: output))
    }

    @Test func theMemoryEstimateCountsZeROShardingAndLocalRanks() throws {
        let shape = ModelShape(layers: 4, width: 256, heads: 4, contextLength: 64, vocabularySize: 256, layerSequenceName: "h",
                               inputModuleNames: ["wte", "wpe"], outputModuleNames: ["ln_f"])
        func estimate(dp: Int, stage: Int, ranks: Int, bf16: Bool = false) throws -> MemoryEstimate {
            var settings = ParallelSettings()
            settings.dataParallelSize = dp
            settings.zeroStage = stage
            if bf16 { settings.dataParallel.parameterDType = .bfloat16 }
            let plan = try ParallelPlan(settings: settings, worldSize: dp, model: shape)
            return MemoryEstimate(plan: plan, optimizerStateBytesPerParameter: 8, microBatchSize: 2, ranksInProcess: ranks)
        }
        let whole = try estimate(dp: 1, stage: 0, ranks: 1), sharded = try estimate(dp: 4, stage: 3, ranks: 1)
        #expect(abs(sharded.stateBytesPerRank * 4 - whole.stateBytesPerRank) < 1)
        #expect(try estimate(dp: 4, stage: 3, ranks: 4).bytesPerProcess == 4 * sharded.bytesPerProcess)
        #expect(throws: ConvoyError.self) { try whole.check(limit: whole.bytesPerProcess - 1) }
        try whole.check(limit: whole.bytesPerProcess)
        // bf16 keeps the fp32 masters apart: 4 bytes per parameter without ZeRO, 4/N at stages 1–2, none at stage 3.
        let parameters = whole.stateBytesPerRank / 16
        #expect(abs(try estimate(dp: 1, stage: 0, ranks: 1, bf16: true).stateBytesPerRank - whole.stateBytesPerRank - 4 * parameters) < 1)
        #expect(abs(try estimate(dp: 4, stage: 2, ranks: 1, bf16: true).stateBytesPerRank - estimate(dp: 4, stage: 2, ranks: 1).stateBytesPerRank - parameters) < 1)
        #expect(try estimate(dp: 4, stage: 3, ranks: 1, bf16: true).stateBytesPerRank == sharded.stateBytesPerRank)
    }

    @Test func nonFiniteWeightsInACheckpointAreRefusedNamingTheTensor() throws {
        let scratch = scratchDirectory("nan")
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let configuration = GPTConfiguration(vocabularySize: 256, contextLength: 8, layers: 1, heads: 2, width: 8)
        let model = try GPT(configuration, seed: 1)
        let (name, parameter) = model.namedParameters().last!
        var values = parameter.toArray()
        values[3] = .nan
        withNoGrad { parameter.assign(Tensor(shape: parameter.shape, values: values)) }
        try TrainingCheckpoint.save(model: model, optimizer: nil, state: TrainerState(step: 1, seed: 1, dataPosition: 8, configuration: "", optimizer: "adamw"),
                                    to: scratch + "/ck")
        let loading = message { _ = try GPTCheckpoint.load(from: scratch + "/ck") }
        #expect(loading.contains(name) && loading.contains("nan") && loading.contains("element 3"), "\(loading)")
        // Resume: a trained run's checkpoint saved again with one weight turned into infinity.
        let run = try tinyConfiguration(output: scratch + "/run", steps: 1)
        let trainer = try Trainer(configuration: run)
        _ = try trainer.run()
        let (tensorName, tensor) = trainer.model.namedParameters().first { $0.name.hasSuffix(".weight") }!
        var broken = tensor.toArray()
        broken[0] = .infinity
        withNoGrad { tensor.assign(Tensor(shape: tensor.shape, values: broken)) }
        let saved = try TrainingCheckpoint.load(from: scratch + "/run/final", into: try GPT(run.modelConfiguration, seed: 1)).state
        try TrainingCheckpoint.save(model: trainer.model, optimizer: trainer.optimizer, state: saved, to: scratch + "/run/final")
        var resumed = run
        resumed.output = scratch + "/resumed"
        resumed.steps = 2
        let resuming = message { _ = try Trainer(configuration: resumed, resume: scratch + "/run/final") }
        #expect(resuming.contains(tensorName) && resuming.contains("inf"), "\(resuming)")
    }

    @Test func aGarbageTrainerStateGetsAPlainMessage() throws {
        let scratch = scratchDirectory("garbage-state")
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let model = try GPT(GPTConfiguration(vocabularySize: 256, contextLength: 8, layers: 1, heads: 2, width: 8), seed: 1)
        try TrainingCheckpoint.save(model: model, optimizer: nil, state: TrainerState(step: 1, seed: 1, dataPosition: 8, configuration: "", optimizer: "adamw"),
                                    to: scratch + "/ck")
        for (contents, expected) in [("garbage", "not valid JSON"), ("{\"step\": 1}", "is missing"), ("[1, 2]", "not a JSON object"), ("{\"formatVersion\": \"x\"}", "formatVersion")] {
            try Data(contents.utf8).write(to: URL(fileURLWithPath: scratch + "/ck/trainer.json"))
            let text = message { _ = try TrainingCheckpoint.load(from: scratch + "/ck", into: model) }
            #expect(text.contains(expected) && text.contains("trainer.json") && !text.contains("DecodingError") && !text.contains("Context("), "\(text)")
        }
    }

    @Test func contradictoryAndInconsistentSettingsAreRefused() throws {
        for flags in [[("--dataset", "arithmetic"), ("--data", "corpus.txt")], [("--data", "corpus.txt"), ("--dataset", "arithmetic")]] {
            let text = message { _ = try TrainingSettings.resolve(configFile: nil, flags: flags) }
            #expect(text.contains("corpus.txt") && text.contains("arithmetic"), "\(text)")
        }
        var fromFile = TrainingConfiguration()
        let text = message { try TrainingSettings.apply(toml: "[data]\ndataset = \"arithmetic\"\npath = \"corpus.txt\"\n", source: "c.toml", to: &fromFile) }
        #expect(text.contains("corpus.txt"), "\(text)")

        // --micro-batch-size is checked without a pipeline too.
        var configuration = try tinyConfiguration(output: scratchDirectory("mbs"), steps: 1)
        configuration.microBatchSize = 3
        let micro = message { _ = try Trainer(configuration: configuration) }
        #expect(micro.contains("micro_batch_size 3"), "\(micro)")
    }

    @Test func resumingWithAnotherDatasetIsRefused() throws {
        let first = scratchDirectory("dataset-a"), second = scratchDirectory("dataset-b")
        defer { for path in [first, second] { try? FileManager.default.removeItem(atPath: path) } }
        let configuration = try tinyConfiguration(output: first, steps: 2)
        _ = try Trainer(configuration: configuration).run()
        var other = configuration
        other.output = second
        other.steps = 4
        other.heldOut = 6
        let text = message { _ = try Trainer(configuration: other, resume: first + "/final") }
        #expect(text.contains("5 held-out") && text.contains("6 held-out"), "\(text)")
    }

    @Test func specialFilesAndBadPathsAreNamed() throws {
        let scratch = scratchDirectory("fifo")
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
        #expect(mkfifo(scratch + "/pipe", 0o600) == 0)
        let fifo = message { _ = try TextDataset(path: scratch + "/pipe", contextLength: 8, seed: 1) }
        #expect(fifo.contains(scratch + "/pipe") && fifo.contains("not a regular file") && fifo.contains("FIFO"), "\(fifo)")
        let trace = message { try RunDirectory.checkWritableFile(scratch + "/missing/trace.json", flag: "--trace") }
        #expect(trace.contains("--trace") && trace.contains(scratch + "/missing"), "\(trace)")
        var configuration = try tinyConfiguration(output: "/dev/null", steps: 1)
        let devNull = message { _ = try RunDirectory.claim(for: configuration, resuming: false) }
        #expect(devNull.contains("/dev/null") && devNull.contains("not a directory"), "\(devNull)")
        configuration.output = "/proc/convoy-run"
        let proc = message { _ = try RunDirectory.claim(for: configuration, resuming: false) }
        #expect(proc.contains("/proc/convoy-run"), "\(proc)")
    }
}

/// Process-level: output errors end `convoy` with one line, and sized flags are bounded.
@Suite(.serialized) struct OutputErrorCommandTests {
    let tiny = ["train", "--layers", "1", "--d-model", "16", "--heads", "2", "--context", "16", "--digits", "3", "--batch", "8",
                "--steps", "3", "--eval-every", "0", "--log-every", "1"]

    /// Runs convoy with standard output going to `output` (a closed pipe, /dev/full); returns status and stderr.
    func run(_ arguments: [String], stdout output: Any) throws -> (Int32, String) {
        let directory = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        let process = Process()
        process.executableURL = directory.appendingPathComponent("convoy")
        process.arguments = arguments
        process.environment = ["CONVOY_THREADS": "1", "PATH": "/usr/bin:/bin"]
        let errors = Pipe()
        process.standardOutput = output
        process.standardError = errors
        try process.run()
        let text = errors.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return (process.terminationStatus, String(decoding: text, as: UTF8.self))
    }

    @Test func aClosedPipeOrAFullDiskOnStandardOutputIsOneLineError() throws {
        let scratch = scratchDirectory("stdout")
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let pipe = Pipe()
        try pipe.fileHandleForReading.close()
        let (closedStatus, closed) = try run(tiny + ["--output", scratch + "/a"], stdout: pipe)
        #expect(closedStatus == 1 && closed.hasPrefix("error: ") && closed.contains("standard output was closed"), "status \(closedStatus): \(closed)")
        #expect(closed.split(separator: "\n").count == 1, "\(closed)")
        let full = try #require(FileHandle(forWritingAtPath: "/dev/full"))
        let (fullStatus, fullText) = try run(tiny + ["--output", scratch + "/b"], stdout: full)
        #expect(fullStatus == 1 && fullText.contains("No space left on device"), "status \(fullStatus): \(fullText)")
    }

    @Test func sizedFlagsAreBounded() throws {
        for (arguments, words) in [
            (["generate", "--checkpoint", "x", "--prompt", "a", "--max-tokens", "100000000000"], "--max-tokens"),
            (["generate", "--checkpoint", "x", "--prompt", "a", "--threads", "100000"], "--threads"),
            (["eval", "--checkpoint", "x", "--task", "arithmetic", "--threads", "100000"], "--threads"),
            (["bench", "comm", "--ranks", "100000"], "--ranks"),
            (["plan", "--pp", "2", "--accumulate-steps", "100000000"], "--accumulate-steps"),
            (["plan", "--pp", "2", "--layers", "256", "--context", "1048576", "--micro-batch-size", "1000000", "--d-model", "65536", "--heads", "1024"], "2^62"),
        ] {
            let result = try runConvoy(arguments)
            #expect(result.status != 0 && result.error.contains(words) && !result.error.contains("Fatal error"), "\(arguments): \(result.status) \(result.error)")
        }
    }
}
