import ArgumentParser
import ConvoyNN
import ConvoyTensor
import ConvoyTrain

/// `convoy generate`: continues a prompt with a trained checkpoint.
struct GenerateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "generate", abstract: "Continue a prompt with a checkpoint and its tokenizer (temperature 0 is greedy).")

    @Option(help: "Checkpoint directory.") var checkpoint: String
    @Option(help: "Text to continue.") var prompt: String
    @Option(name: .customLong("max-tokens"), help: "Tokens to generate.") var maxTokens: Int = 64
    @Option(help: "Sampling temperature (0: greedy).") var temperature: Double = 0
    @Option(help: "Sampling seed.") var seed: Int = 0
    @Option(help: "Compute threads.") var threads: Int?

    func validate() throws {
        try InputBounds.check(maxTokens, InputBounds.generatedTokens, flag: "--max-tokens", why: "each token is a forward pass; generate longer texts in several runs")
        if let threads { try InputBounds.check(threads, InputBounds.threads, flag: "--threads") }
        guard temperature >= 0, temperature.isFinite else { throw ValidationError("--temperature must be ≥ 0") }
        guard seed >= 0 else { throw ValidationError("--seed must be ≥ 0") }
        guard !prompt.isEmpty else { throw ValidationError("--prompt must not be empty") }
    }

    func run() throws {
        if let threads { ComputePool.setSharedThreadCount(threads) }
        let directory = try TrainingCheckpoint.resolvedDirectory(checkpoint)
        let model = try TrainingCheckpoint.loadModel(from: directory)
        model.eval()
        let tokenizer = try TokenizerFiles.tokenizer(ofCheckpoint: directory)
        // Streamed token by token (each token's bytes as soon as it is generated; a character split over two
        // tokens completes on the terminal when its last byte arrives), so a long generation shows as it goes
        // and a closed pipe stops it at once.
        try StandardOutput.write(prompt)
        _ = try TextGenerator(model: model).generate(
            prompt: tokenizer.encode(prompt), maxNewTokens: maxTokens, temperature: Float(temperature), seed: UInt64(seed),
            onToken: { try StandardOutput.write(tokenizer.decodeBytes([$0])) })
        try StandardOutput.write("\n")
    }
}
