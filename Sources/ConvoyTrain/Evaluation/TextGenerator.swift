import ConvoyNN
import ConvoyTensor
import Foundation

/// Autoregressive generation from a ``ConvoyNN/LanguageModel``: greedy decoding or temperature sampling, for many
/// prompts at once.
///
/// There is no KV cache: every step runs the model over each sequence's (cropped) context again, which keeps
/// generation exactly the model's own forward pass. Position embeddings are learned, so prompts cannot be
/// left-padded to a common length; instead, rows whose current (cropped) lengths agree run together as one
/// batch, and rows of other lengths run as separate batches.
///
/// Sampling is reproducible and independent of batching: the uniform number that picks row `r`'s `n`-th new
/// token is Philox block `n` of the stream derived from `(seed, r)`, whatever else is generated alongside.
public struct TextGenerator {
    /// The model that produces the logits (run with ``ConvoyNN/ForwardContext/evaluation``: no dropout).
    public let model: any LanguageModel

    /// Creates a generator for `model`.
    public init(model: any LanguageModel) {
        self.model = model
    }

    /// Generates up to `maxNewTokens` tokens after each prompt and returns only the new tokens, one array
    /// per prompt in the order given.
    ///
    /// - Parameters:
    ///   - prompts: Token ids of each prompt (non-empty, each id in the model's vocabulary). Prompts longer
    ///     than the context are cropped to their last `contextLength` tokens, as is every later step.
    ///   - maxNewTokens: The most tokens to generate per prompt (≥ 0).
    ///   - temperature: 0 picks the most likely token (ties go to the lowest id); a positive value samples
    ///     from softmax(logits / temperature).
    ///   - seed: Seed of the sampling stream (unused when `temperature` is 0).
    ///   - stopToken: A token that ends a row; it is not included in that row's output.
    ///   - onToken: Called with (row, token) for each token as soon as it is generated, so that output can be
    ///     streamed; an error it throws stops generation.
    /// - Throws: ``ConvoyTensor/ConvoyError/invalidArgument(_:)`` for an empty prompt, a token id outside the
    ///   vocabulary, a negative `maxNewTokens`, or a negative or non-finite `temperature`; or `onToken`'s error.
    public func generate(prompts: [[Int32]], maxNewTokens: Int, temperature: Float, seed: UInt64, stopToken: Int32? = nil,
                         onToken: ((_ row: Int, _ token: Int32) throws -> Void)? = nil) throws -> [[Int32]] {
        try validate(prompts: prompts, maxNewTokens: maxNewTokens, temperature: temperature, stopToken: stopToken)
        var sequences = prompts
        var outputs = [[Int32]](repeating: [], count: prompts.count)
        var active = Array(prompts.indices)
        let contextLength = model.shape.contextLength
        return try withNoGrad {
            for step in 0..<maxNewTokens {
                if active.isEmpty { break }
                // Rows longer than the context all crop to `contextLength`, so they share one batch.
                let groups = Dictionary(grouping: active) { min(sequences[$0].count, contextLength) }
                var finished = Set<Int>()
                for (time, rows) in groups.sorted(by: { $0.key < $1.key }) {
                    let next = nextTokens(rows: rows, sequences: sequences, time: time, step: step, temperature: temperature, seed: seed)
                    for (row, token) in zip(rows, next) {
                        if token == stopToken {
                            finished.insert(row)
                        } else {
                            sequences[row].append(token)
                            outputs[row].append(token)
                            try onToken?(row, token)
                        }
                    }
                }
                active.removeAll { finished.contains($0) }
            }
            return outputs
        }
    }

    /// Generates up to `maxNewTokens` tokens after one prompt; see ``generate(prompts:maxNewTokens:temperature:seed:stopToken:)``
    /// (the prompt is row 0 of the sampling stream).
    public func generate(prompt: [Int32], maxNewTokens: Int, temperature: Float, seed: UInt64, stopToken: Int32? = nil,
                         onToken: ((_ token: Int32) throws -> Void)? = nil) throws -> [Int32] {
        try generate(prompts: [prompt], maxNewTokens: maxNewTokens, temperature: temperature, seed: seed, stopToken: stopToken,
                     onToken: onToken.map { callback in { _, token in try callback(token) } })[0]
    }

    private func validate(prompts: [[Int32]], maxNewTokens: Int, temperature: Float, stopToken: Int32?) throws {
        let vocabulary = model.shape.vocabularySize
        guard maxNewTokens >= 0 else {
            throw ConvoyError.invalidArgument("maxNewTokens must be at least 0, got \(maxNewTokens)")
        }
        guard temperature.isFinite, temperature >= 0 else {
            throw ConvoyError.invalidArgument("temperature must be a finite value ≥ 0 (0 means greedy), got \(temperature)")
        }
        if let stopToken, stopToken < 0 || Int(stopToken) >= vocabulary {
            throw ConvoyError.invalidArgument("stop token \(stopToken) is outside the vocabulary 0..<\(vocabulary)")
        }
        for (row, prompt) in prompts.enumerated() {
            guard !prompt.isEmpty else {
                throw ConvoyError.invalidArgument("prompt \(row) is empty; generation needs at least one token to condition on")
            }
            if let bad = prompt.first(where: { $0 < 0 || Int($0) >= vocabulary }) {
                throw ConvoyError.invalidArgument("prompt \(row) contains token \(bad), outside the vocabulary 0..<\(vocabulary)")
            }
        }
    }

    /// The next token of each of `rows`, whose sequences all crop to `time` tokens.
    private func nextTokens(rows: [Int], sequences: [[Int32]], time: Int, step: Int, temperature: Float, seed: UInt64) -> [Int32] {
        var tokens: [Int32] = []
        tokens.reserveCapacity(rows.count * time)
        for row in rows { tokens += sequences[row].suffix(time) }
        let logits = model.logits(tokens, batch: rows.count, time: time, context: .evaluation).contiguous()
        let vocabulary = model.shape.vocabularySize
        let base = logits.contiguousFloats
        return rows.enumerated().map { index, row in
            // Only the last position predicts the next token.
            let last = UnsafeBufferPointer(start: base + ((index * time) + time - 1) * vocabulary, count: vocabulary)
            if temperature == 0 { return Self.argmax(last) }
            let stream = PhiloxRandom(seed: seed, stream: PhiloxRandom.mix(PhiloxRandom.streamID("generate"), UInt64(row)))
            return Self.sample(last, temperature: temperature, uniform: stream.uniform(at: UInt64(step)))
        }
    }

    /// The index of the largest logit; the strict comparison keeps the lowest id among ties.
    static func argmax(_ logits: UnsafeBufferPointer<Float>) -> Int32 {
        var best = 0
        for index in 1..<logits.count where logits[index] > logits[best] { best = index }
        return Int32(best)
    }

    /// Inverse-CDF sampling from softmax(logits / temperature), accumulated in Double so the tail of a
    /// large vocabulary is not lost to rounding.
    static func sample(_ logits: UnsafeBufferPointer<Float>, temperature: Float, uniform: Float) -> Int32 {
        let maximum = Double(logits.max() ?? 0)
        let scale = 1 / Double(temperature)
        var weights = [Double](repeating: 0, count: logits.count)
        var total = 0.0
        for index in logits.indices {
            weights[index] = exp((Double(logits[index]) - maximum) * scale)
            total += weights[index]
        }
        let threshold = Double(uniform) * total
        var cumulative = 0.0
        var lastPossible = 0
        for index in weights.indices where weights[index] > 0 {
            cumulative += weights[index]
            lastPossible = index
            if threshold < cumulative { return Int32(index) }
        }
        // Rounding can leave the threshold just above the final sum; the last token with weight wins then.
        return Int32(lastPossible)
    }
}
