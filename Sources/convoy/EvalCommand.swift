import ArgumentParser
import ConvoyNN
import ConvoyTensor
import ConvoyTrain
import Foundation

/// `convoy eval`: mean cross-entropy of a checkpoint on a file's bytes.
struct EvalCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "eval",
        abstract: "Evaluate a checkpoint: cross-entropy on a file's tokens (--data; its tokenizer, or bytes), or held-out accuracy (--task arithmetic).",
        discussion: """
        With --data (tokenised by the checkpoint's tokenizer files, or as bytes when it has none), window i has inputs tokens[i·T ..< (i+1)·T] and targets tokens[i·T+1 ..< (i+1)·T+1], \
        for i in 0 ..< min((length−1)/T, B·K). With --task arithmetic, the held-out problems are those of the \
        run that trained the checkpoint (its seed, digits and held-out count, from trainer.json), unless given.
        """)

    @Option(help: "Checkpoint directory (model.safetensors + config.json).") var checkpoint: String
    @Option(help: "Model of the checkpoint: gpt (default) or ctr (reports AUC and log loss on the run's validation data, or --data TSV).") var model: String = "gpt"
    @Option(help: "Text file to score (tokenised with the checkpoint's tokenizer).") var data: String?
    @Option(help: "Task to score instead of a file: arithmetic (exact-match accuracy on held-out additions).") var task: String?
    @Option(help: "Context length T of each window (with --data).") var context: Int?
    @Option(help: "Arithmetic: the seed that chose the held-out problems (default: the checkpoint's).") var seed: Int?
    @Option(help: "Arithmetic: digits per operand (default: the checkpoint's).") var digits: Int?
    @Option(name: .customLong("held-out"), help: "Arithmetic: number of held-out problems (default: the checkpoint's).") var heldOut: Int?
    @Option(help: "Windows per forward pass.") var batch: Int = 8
    @Option(name: .customLong("max-batches"), help: "Evaluate at most this many batches (default: the whole file).") var maxBatches: Int?
    @Option(help: "Compute threads (default: CONVOY_THREADS or all cores).") var threads: Int?
    @Flag(help: "Print one JSON line {\"loss\": …, \"tokens\": …}.") var json = false

    func validate() throws {
        guard ["gpt", "ctr"].contains(model) else { throw ValidationError("--model must be gpt or ctr, got '\(model)'") }
        if model == "ctr" {
            if task != nil || context != nil { throw ValidationError("--model ctr takes --checkpoint and optionally --data FILE (Criteo TSV), not --task or --context") }
            return
        }
        guard (data == nil) != (task == nil) else { throw ValidationError("give exactly one of --data FILE or --task arithmetic") }
        if let task, task != "arithmetic" { throw ValidationError("--task must be 'arithmetic', got '\(task)'") }
        if data != nil, context == nil { throw ValidationError("--data needs --context T") }
        if let context, context <= 0 { throw ValidationError("--context must be positive") }
        guard batch > 0 else { throw ValidationError("--batch must be positive") }
        if let maxBatches, maxBatches <= 0 { throw ValidationError("--max-batches must be positive") }
        if let threads { try InputBounds.check(threads, InputBounds.threads, flag: "--threads") }
    }

    func run() throws {
        if let threads { ComputePool.setSharedThreadCount(threads) }
        if model == "ctr" {
            try evaluateClickThrough()
            return
        }
        let directory = try TrainingCheckpoint.resolvedDirectory(checkpoint)
        let model = try TrainingCheckpoint.loadModel(from: directory)
        model.eval()
        guard let data, let context else {
            try evaluateArithmetic(model, directory: directory)
            return
        }
        guard context <= model.configuration.contextLength else {
            throw ConvoyError.invalidArgument("--context \(context) exceeds the checkpoint's context length \(model.configuration.contextLength); use --context \(model.configuration.contextLength) or less")
        }
        guard let contents = FileManager.default.contents(atPath: data) else {
            throw ConvoyError.io("cannot read --data \(data)")
        }
        // The text is read with the checkpoint's tokenizer (its copied files), or as bytes.
        let tokenizer = try TokenizerFiles.tokenizer(ofCheckpoint: directory)
        guard model.configuration.vocabularySize >= tokenizer.vocabularySize else {
            throw ConvoyError.incompatible("the checkpoint's vocabulary (\(model.configuration.vocabularySize)) cannot hold the \(tokenizer.vocabularySize) ids of its tokenizer")
        }
        let tokens = tokenizer.encode(bytes: [UInt8](contents))
        var windows = tokens.count > 1 ? (tokens.count - 1) / context : 0
        if let maxBatches { windows = min(windows, batch * maxBatches) }
        guard windows > 0 else {
            throw ConvoyError.invalidArgument("\(data) has \(tokens.count) tokens: too short for one window of \(context) tokens plus a target")
        }
        var totalLoss = 0.0
        var start = 0
        try withNoGrad {
            while start < windows {
                let count = min(batch, windows - start)
                var inputs = [Int32](), targets = [Int32]()
                inputs.reserveCapacity(count * context)
                targets.reserveCapacity(count * context)
                for window in start..<(start + count) {
                    let base = window * context
                    for i in 0..<context {
                        inputs.append(tokens[base + i])
                        targets.append(tokens[base + i + 1])
                    }
                }
                let loss = model.loss(inputs, targets: targets, batch: count, time: context)
                guard loss.scalarValue.isFinite else { throw ConvoyError.incompatible("the loss is not finite: the checkpoint's weights are broken") }
                totalLoss += Double(loss.scalarValue) * Double(count * context)
                start += count
            }
        }
        let scored = windows * context
        let mean = totalLoss / Double(scored)
        if json {
            print("{\"loss\": \(mean), \"tokens\": \(scored)}")
        } else {
            print(String(format: "loss %.6f over %d tokens (%d windows of %d)", mean, scored, windows, context))
        }
    }

    private func evaluateArithmetic(_ model: GPT, directory: String) throws {
        var trained = TrainingConfiguration()
        if let state = FileManager.default.contents(atPath: directory + "/" + TrainingCheckpoint.trainerFileName) {
            let decoded = try TrainerState.decode(state, path: directory + "/" + TrainingCheckpoint.trainerFileName)
            try TrainingSettings.apply(toml: decoded.configuration, source: directory + "/trainer.json", to: &trained)
        }
        let dataset = try ArithmeticDataset(
            seed: seed.map(UInt64.init) ?? trained.seed, digits: digits ?? trained.digits,
            contextLength: model.configuration.contextLength, heldOutCount: heldOut ?? trained.heldOut)
        let report = try ArithmeticEvaluator.evaluate(model: model, problems: dataset.heldOutProblems)
        if json {
            print("{\"accuracy\": \(report.accuracy), \"problems\": \(report.problems)}")
        } else {
            print(String(format: "held-out arithmetic: %d/%d exact (accuracy %.2f%%)", report.correct, report.problems, report.accuracy * 100))
            for example in report.examples.prefix(5) { print("  wrong: \(example)") }
        }
    }

    /// AUC and log loss of a CTR checkpoint on its run's validation data (or the validation part of `--data`).
    private func evaluateClickThrough() throws {
        let (trained, model, tables) = try ClickThroughCheckpoint.load(from: checkpoint)
        var configuration = trained
        if let data { configuration.dataPath = data }
        let dataset = try configuration.makeClickDataset()
        let examples = dataset.validationExamples
        for (index, example) in examples.enumerated() { try dataset.check(example, index: index) }
        let result = try ClickThroughTrainer.evaluate(model: model, examples: examples) { ClickThroughTrainer.read(tables, ids: $0) }
        if json {
            var fields = ["\"auc\": \(result.auc)", "\"logloss\": \(result.logLoss)", "\"examples\": \(examples.count)"]
            if let best = dataset.bestAchievableAUC { fields.append("\"best_auc\": \(best)") }
            print("{" + fields.joined(separator: ", ") + "}")
        } else {
            let best = dataset.bestAchievableAUC.map { String(format: " (best achievable %.4f)", $0) } ?? ""
            print(String(format: "AUC %.4f%@, log loss %.4f on %d validation examples of %@", result.auc, best, result.logLoss, examples.count, dataset.summary))
        }
    }
}
