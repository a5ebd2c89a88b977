import ConvoyNN
import ConvoyTensor
import ConvoyTrain
import Testing

@Suite struct GenerationTests {
    let configuration = GPTConfiguration(vocabularySize: 64, contextLength: 12, layers: 2, heads: 2, width: 16)

    /// A random model whose embeddings are scaled up so its greedy continuations vary from step to step
    /// (at the default N(0, 0.02) initialisation they tend to repeat one token, which would test little).
    func varyingModel(seed: UInt64 = 11) throws -> GPT {
        let model = try GPT(configuration, seed: seed)
        for weight in [model.tokenEmbedding.weight, model.positionEmbedding.weight] {
            let values = weight.floatPointer
            for index in 0..<weight.count { values[index] *= 40 }
        }
        return model
    }

    /// A model whose logits are exactly zero everywhere: with the LM head tied to a zero token embedding,
    /// every next-token distribution is uniform.
    func flatModel() throws -> GPT {
        let model = try GPT(configuration, seed: 2)
        model.tokenEmbedding.weight.floatPointer.update(repeating: 0, count: model.tokenEmbedding.weight.count)
        return model
    }

    /// The reference: one sequence at a time, the whole (cropped) sequence through the model at every step,
    /// argmax of the last position with ties to the lowest id.
    func naiveGreedy(_ model: GPT, prompt: [Int32], maxNewTokens: Int, stopToken: Int32? = nil) -> [Int32] {
        var sequence = prompt
        var generated: [Int32] = []
        let context = model.configuration.contextLength, vocabulary = model.configuration.vocabularySize
        for _ in 0..<maxNewTokens {
            let window = Array(sequence.suffix(context))
            let logits = withNoGrad { model.logits(window, batch: 1, time: window.count) }.toArray()
            let last = Array(logits[(window.count - 1) * vocabulary..<window.count * vocabulary])
            let token = Int32(last.firstIndex(of: last.max()!)!)
            if token == stopToken { break }
            sequence.append(token)
            generated.append(token)
        }
        return generated
    }

    let prompts: [[Int32]] = [[5, 9, 2], [17], [3, 3, 3, 40, 41], [60, 1, 8], [22, 23, 24, 25, 26, 27, 28]]

    @Test func greedyMatchesANaiveOneSequenceLoop() throws {
        let model = try varyingModel()
        let generated = try TextGenerator(model: model).generate(prompts: prompts, maxNewTokens: 4, temperature: 0, seed: 0)
        for (prompt, output) in zip(prompts, generated) {
            #expect(output == naiveGreedy(model, prompt: prompt, maxNewTokens: 4))
        }
        // The check above means something only if the continuations are not all one repeated token.
        #expect(Set(generated.joined()).count > 3)
    }

    @Test func batchingPromptsOfDifferentLengthsMatchesGeneratingEachAlone() throws {
        let generator = TextGenerator(model: try varyingModel())
        let together = try generator.generate(prompts: prompts, maxNewTokens: 5, temperature: 0, seed: 0)
        let alone = try prompts.map { try generator.generate(prompt: $0, maxNewTokens: 5, temperature: 0, seed: 0) }
        #expect(together == alone)
        #expect(together.allSatisfy { $0.count == 5 })
    }

    @Test func sampledRowDoesNotDependOnTheRowsBatchedWithIt() throws {
        let generator = TextGenerator(model: try varyingModel())
        let first = try generator.generate(prompts: [[1, 2, 3], [4, 5, 6]], maxNewTokens: 6, temperature: 1.5, seed: 9)
        let second = try generator.generate(prompts: [[1, 2, 3], [50, 51, 52], [7]], maxNewTokens: 6, temperature: 1.5, seed: 9)
        #expect(first[0] == second[0])
    }

    @Test func samplingIsReproducibleForASeedAndVariesAcrossSeeds() throws {
        let generator = TextGenerator(model: try flatModel())
        let prompts: [[Int32]] = [[1, 2], [3]]
        let first = try generator.generate(prompts: prompts, maxNewTokens: 10, temperature: 0.8, seed: 42)
        let again = try generator.generate(prompts: prompts, maxNewTokens: 10, temperature: 0.8, seed: 42)
        let otherSeed = try generator.generate(prompts: prompts, maxNewTokens: 10, temperature: 0.8, seed: 43)
        #expect(first == again)
        #expect(first != otherSeed)
        // Rows draw from different streams, so two rows are not copies of each other.
        #expect(first[0] != first[1])
    }

    @Test func flatLogitsSampleManyTokensButGreedyPicksTheLowestId() throws {
        let generator = TextGenerator(model: try flatModel())
        let sampled = try generator.generate(prompt: [7], maxNewTokens: 64, temperature: 1, seed: 5)
        #expect(sampled.count == 64)
        #expect(sampled.allSatisfy { (0..<64).contains($0) })
        // 64 uniform draws from 64 tokens hit about 40 distinct ones; a stuck or biased sampler hits few.
        #expect(Set(sampled).count >= 25)
        let greedy = try generator.generate(prompt: [7], maxNewTokens: 3, temperature: 0, seed: 5)
        #expect(greedy == [0, 0, 0])
    }

    @Test func stopTokenEndsOnlyItsRowAndIsNotReturned() throws {
        let model = try varyingModel()
        let generator = TextGenerator(model: model)
        let free = try generator.generate(prompts: prompts, maxNewTokens: 6, temperature: 0, seed: 0)
        // Stop on the third token the first prompt produces; other rows may or may not contain it.
        let stop = free[0][2]
        let stopped = try generator.generate(prompts: prompts, maxNewTokens: 6, temperature: 0, seed: 0, stopToken: stop)
        for (row, output) in stopped.enumerated() {
            let expected = free[row].firstIndex(of: stop).map { Array(free[row][..<$0]) } ?? free[row]
            #expect(output == expected)
            #expect(!output.contains(stop))
        }
        #expect(stopped[0].count <= 2)
    }

    @Test func sequencesLongerThanTheContextAreCroppedToItsLastTokens() throws {
        let model = try varyingModel()
        let generator = TextGenerator(model: model)
        // 8 + 10 tokens and 15 + 3 tokens both pass the context of 12.
        let long: [[Int32]] = [[1, 2, 3, 4, 5, 6, 7, 8], Array(10..<25)]
        let generated = try generator.generate(prompts: long, maxNewTokens: 10, temperature: 0, seed: 0)
        #expect(generated[0] == naiveGreedy(model, prompt: long[0], maxNewTokens: 10))
        #expect(generated[1] == naiveGreedy(model, prompt: long[1], maxNewTokens: 10))
        #expect(generated.allSatisfy { $0.count == 10 })
    }

    @Test func zeroNewTokensAndNoPromptsGiveEmptyResults() throws {
        let generator = TextGenerator(model: try varyingModel())
        #expect(try generator.generate(prompts: [[1], [2, 3]], maxNewTokens: 0, temperature: 0, seed: 0) == [[], []])
        #expect(try generator.generate(prompts: [], maxNewTokens: 4, temperature: 1, seed: 0) == [])
    }

    @Test func invalidArgumentsThrow() throws {
        let generator = TextGenerator(model: try varyingModel())
        #expect(throws: ConvoyError.self) { try generator.generate(prompt: [], maxNewTokens: 1, temperature: 0, seed: 0) }
        #expect(throws: ConvoyError.self) { try generator.generate(prompts: [[1], []], maxNewTokens: 1, temperature: 0, seed: 0) }
        #expect(throws: ConvoyError.self) { try generator.generate(prompt: [1], maxNewTokens: -1, temperature: 0, seed: 0) }
        #expect(throws: ConvoyError.self) { try generator.generate(prompt: [1], maxNewTokens: 1, temperature: -0.5, seed: 0) }
        #expect(throws: ConvoyError.self) { try generator.generate(prompt: [1], maxNewTokens: 1, temperature: .nan, seed: 0) }
        #expect(throws: ConvoyError.self) { try generator.generate(prompt: [1, 64], maxNewTokens: 1, temperature: 0, seed: 0) }
        #expect(throws: ConvoyError.self) { try generator.generate(prompt: [-1], maxNewTokens: 1, temperature: 0, seed: 0) }
        #expect(throws: ConvoyError.self) { try generator.generate(prompt: [1], maxNewTokens: 1, temperature: 0, seed: 0, stopToken: 64) }
    }
}
