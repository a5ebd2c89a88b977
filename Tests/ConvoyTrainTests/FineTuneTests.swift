import ConvoyComm
import ConvoyNN
import ConvoyParallel
import ConvoyTensor
import ConvoyTrain
import Foundation
import Testing

/// `--init-from`: a Hugging Face GPT-2 directory (the fixture made by scripts/make_finetune_fixture.py: 2 layers,
/// width 32, 4 heads, 32 positions, a byte-level BPE of 384 ids) as the first weights of a run.
@Suite(.serialized) struct FineTuneTests {
    let fixture = fixtureDirectory("hf-gpt2-bpe-tiny")

    func flags(output: String, tokenizer: String?, _ extra: [(String, String)] = []) -> [(flag: String, value: String)] {
        var flags: [(flag: String, value: String)] = [
            ("--init-from", fixture), ("--data", fixture + "/corpus.txt"), ("--context", "16"), ("--batch", "4"), ("--steps", "4"),
            ("--optimizer", "sgd"), ("--lr", "0.05"), ("--warmup", "0"), ("--eval-every", "0"), ("--log-every", "1"),
            ("--output", output), ("--token-cache", output + "-cache"),
        ]
        if let tokenizer { flags.append(("--tokenizer", tokenizer)) }
        return flags + extra
    }

    @Test func theShapeComesFromConfigJSONAndConflictingFlagsAreRefused() throws {
        let configuration = try TrainingSettings.resolve(configFile: nil, flags: flags(output: scratchDirectory("ft-shape"), tokenizer: nil, [("--context", "32")]))
        #expect(configuration.layers == 2 && configuration.heads == 4 && configuration.dModel == 32)
        #expect(configuration.positions == 32 && configuration.vocabularySize == 384 && configuration.context == 32)
        // The directory's tokenizer is the run's when none is named.
        #expect(configuration.tokenizer == fixture)
        // The context defaults to n_positions when not given.
        let defaulted = try TrainingSettings.resolve(configFile: nil, flags: [("--init-from", fixture), ("--data", fixture + "/corpus.txt")])
        #expect(defaulted.context == 32)
        for (flag, value, message) in [("--layers", "3", "--layers 3 conflicts with --init-from"), ("--d-model", "64", "n_embd 32"),
                                       ("--vocab-size", "50257", "vocab_size 384"), ("--context", "64", "exceeds n_positions 32")] {
            #expect(performing: { _ = try TrainingSettings.resolve(configFile: nil, flags: flags(output: "x", tokenizer: nil, [(flag, value)])) },
                    throws: { "\($0)".contains(message) })
        }
        #expect(performing: { _ = try TrainingSettings.resolve(configFile: nil, flags: [("--init-from", "/nonexistent/model"), ("--data", fixture + "/corpus.txt")]) },
                throws: { "\($0)".contains("has no model.safetensors") })
    }

    /// Before any step, every parameter equals the Hugging Face file's; after training, the final checkpoint is
    /// a Hugging Face directory again.
    @Test func aRunStartsFromTheHuggingFaceWeightsAndSavesAHuggingFaceDirectory() throws {
        let output = scratchDirectory("ft-start")
        defer { for path in [output, output + "-cache"] { try? FileManager.default.removeItem(atPath: path) } }
        let trainer = try Trainer(configuration: try TrainingSettings.resolve(configFile: nil, flags: flags(output: output, tokenizer: "bytes")))
        let reference = try GPTCheckpoint.load(from: fixture)
        #expect(weights(trainer.model) == weights(reference))
        let summary = try trainer.run()
        #expect(summary.finalLoss.isFinite)
        let saved = try GPTCheckpoint.load(from: output + "/final")
        #expect(saved.configuration.vocabularySize == 384 && saved.configuration.contextLength == 32)
        #expect(weights(saved) == weights(trainer.model))
    }

    /// (dp, zero stage, pp, tp): the same losses after 4 SGD steps as one process from the same first weights.
    @Test(arguments: [(2, 0, 1, 1), (2, 2, 1, 1), (2, 3, 1, 1), (1, 0, 2, 1), (1, 0, 1, 2), (2, 1, 1, 2)])
    func everyLayoutFineTunesLikeOneProcess(dp: Int, zeroStage: Int, pp: Int, tp: Int) throws {
        let single = scratchDirectory("ft-single"), parallel = scratchDirectory("ft-parallel")
        defer { for path in [single, parallel, single + "-cache", parallel + "-cache"] { try? FileManager.default.removeItem(atPath: path) } }
        let tokenizer = "bytes"
        let one = try Trainer(configuration: try TrainingSettings.resolve(configFile: nil, flags: flags(output: single, tokenizer: tokenizer)))
        let losses = try (0..<4).map { try one.trainStep($0).loss }
        var layout: [(String, String)] = [("--dp", String(dp)), ("--zero-stage", String(zeroStage)), ("--pp", String(pp)), ("--tp", String(tp))]
        if pp > 1 { layout.append(("--accumulate-steps", "2")) }
        let configuration = try TrainingSettings.resolve(configFile: nil, flags: flags(output: parallel, tokenizer: tokenizer, layout))
        let results = try LocalWorld.run(size: dp * pp * tp, threadsPerRank: 1) { group in
            let trainer = try Trainer(configuration: configuration, group: group)
            return try (0..<4).map { try trainer.trainStep($0).loss }
        }
        for (rank, rankLosses) in results.enumerated() {
            for (step, (loss, expected)) in zip(rankLosses, losses).enumerated() {
                #expect(abs(loss - expected) <= 1e-5 * abs(expected), "dp \(dp) zero \(zeroStage) pp \(pp) tp \(tp), rank \(rank), step \(step + 1): \(loss) vs \(expected)")
            }
        }
    }
}
