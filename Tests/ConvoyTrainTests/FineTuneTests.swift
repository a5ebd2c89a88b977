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
        let trainer = try Trainer(configuration: try TrainingSettings.resolve(configFile: nil, flags: flags(output: output, tokenizer: nil, [("--steps", "8")])))
        let reference = try GPTCheckpoint.load(from: fixture)
        #expect(weights(trainer.model) == weights(reference))
        // The corpus is the BPE's ids, from the token cache.
        let tokenizer = try TokenizerLoader.load(path: fixture)
        let corpus = try Data(contentsOf: URL(fileURLWithPath: fixture + "/corpus.txt"))
        let dataset = try #require(trainer.dataset as? TextDataset)
        #expect(dataset.trainingTokenCount + dataset.validationTokenCount == tokenizer.encode(bytes: [UInt8](corpus)).count)
        let before = trainer.validationLoss(batches: 4)!
        let summary = try trainer.run()
        #expect(summary.finalLoss.isFinite && summary.validationLoss! < before, "validation loss \(before) → \(summary.validationLoss!)")
        let final = output + "/final"
        let saved = try GPTCheckpoint.load(from: final)
        #expect(saved.configuration.vocabularySize == 384 && saved.configuration.contextLength == 32)
        #expect(weights(saved) == weights(trainer.model))
        // The tokenizer files travel with the weights, and the checkpoint's tokenizer is the run's.
        for name in ["tokenizer.json", "tokenizer_config.json", "config.json", "model.safetensors"] {
            #expect(FileManager.default.fileExists(atPath: final + "/" + name), "\(name) missing")
        }
        let copied = try TokenizerFiles.tokenizer(ofCheckpoint: final)
        #expect(copied.fingerprint == tokenizer.fingerprint && copied.encode(bytes: [UInt8](corpus)) == tokenizer.encode(bytes: [UInt8](corpus)))
        // Generation decodes with it: the prompt's ids, then new ids whose bytes the tokenizer gives back.
        let prompt = copied.encode("The convoy moved")
        let generated = try TextGenerator(model: saved).generate(prompt: prompt, maxNewTokens: 6, temperature: 0, seed: 0)
        #expect(generated.count == 6 && generated.allSatisfy { $0 >= 0 && $0 < 384 })
        #expect(copied.decodeBytes(prompt + generated).starts(with: Array("The convoy moved".utf8)))
    }

    @Test func aTokenizerLargerThanTheModelIsRefused() throws {
        let output = scratchDirectory("ft-vocab")
        defer { for path in [output, output + "-cache"] { try? FileManager.default.removeItem(atPath: path) } }
        // Without --init-from: a 300-id model cannot hold the BPE's 384 ids.
        let configuration = try TrainingSettings.resolve(configFile: nil, flags: [
            ("--data", fixture + "/corpus.txt"), ("--tokenizer", fixture), ("--vocab-size", "300"), ("--context", "16"), ("--layers", "1"),
            ("--d-model", "16"), ("--heads", "2"), ("--batch", "4"), ("--steps", "1"), ("--output", output), ("--token-cache", output + "-cache"),
        ])
        #expect(performing: { _ = try Trainer(configuration: configuration) },
                throws: { "\($0)".contains("has 384 token ids but the model's vocabulary is 300; use --vocab-size 384 or more") })
        // Without --vocab-size the model takes the tokenizer's.
        let sized = try TrainingSettings.resolve(configFile: nil, flags: [("--data", fixture + "/corpus.txt"), ("--tokenizer", fixture)])
        #expect(sized.vocabularySize == 384)
    }

    /// (dp, zero stage, pp, tp): the same losses after 4 SGD steps as one process from the same first weights.
    @Test(arguments: [(2, 0, 1, 1), (2, 2, 1, 1), (2, 3, 1, 1), (1, 0, 2, 1), (1, 0, 1, 2), (2, 1, 1, 2)])
    func everyLayoutFineTunesLikeOneProcess(dp: Int, zeroStage: Int, pp: Int, tp: Int) throws {
        let single = scratchDirectory("ft-single"), parallel = scratchDirectory("ft-parallel")
        defer { for path in [single, parallel, single + "-cache", parallel + "-cache"] { try? FileManager.default.removeItem(atPath: path) } }
        let tokenizer: String? = nil  // the directory's BPE (384 ids, so the vocabulary-parallel cut sees ids past 256)
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
