import ConvoyNN
import ConvoyTensor
import ConvoyTrain
import Foundation
import Testing

@Suite struct ArithmeticEvaluatorTests {
    let configuration = GPTConfiguration(vocabularySize: 256, contextLength: 16, layers: 1, heads: 2, width: 32)

    /// Trains a tiny GPT until it has memorised the answers of `problems` (targets only on the answers).
    func memorisingModel(of problems: [ArithmeticProblem], dataset: ArithmeticDataset) throws -> (model: GPT, loss: Float) {
        let model = try GPT(configuration, seed: 1)
        let optimizer = Adam.adamW(ParameterGroup.decayingMatrices(of: model, weightDecay: 0), learningRate: 1e-2)
        let examples = problems.map { dataset.example(for: $0) }
        let inputs = examples.flatMap(\.inputs), targets = examples.flatMap(\.targets)
        var loss = Float.infinity
        for _ in 0..<300 {
            let lossTensor = model.loss(inputs, targets: targets, batch: examples.count, time: dataset.contextLength)
            loss = lossTensor.scalarValue
            // Memorised well past the point where every answer token is the argmax.
            if loss < 1e-3 { break }
            try lossTensor.backward()
            optimizer.step()
            optimizer.zeroGradients()
        }
        return (model, loss)
    }

    @Test func aModelThatMemorisedItsProblemsScoresFull() throws {
        let dataset = try ArithmeticDataset(seed: 4, digits: 1, contextLength: 16, heldOutCount: 4)
        let problems = dataset.heldOutProblems
        let (model, loss) = try memorisingModel(of: problems, dataset: dataset)
        #expect(loss < 0.05)
        let report = try ArithmeticEvaluator.evaluate(model: model, problems: problems)
        #expect(report.problems == 4)
        #expect(report.correct == 4)
        #expect(report.accuracy == 1)
        #expect(report.examples.isEmpty)
        // Batching the evaluation differently changes nothing.
        #expect(try ArithmeticEvaluator.evaluate(model: model, problems: problems, batchSize: 3) == report)
    }

    @Test func anUntrainedModelScoresLowWithConsistentCounts() throws {
        let dataset = try ArithmeticDataset(seed: 8, digits: 2, contextLength: 16, heldOutCount: 40)
        let model = try GPT(configuration, seed: 3)
        let report = try ArithmeticEvaluator.evaluate(model: model, problems: dataset.heldOutProblems, batchSize: 16)
        #expect(report.problems == 40)
        #expect(report.correct <= report.problems)
        #expect(report.accuracy == Double(report.correct) / Double(report.problems))
        #expect(report.accuracy < 0.1)
        #expect(report.examples.count == min(ArithmeticEvaluator.exampleLimit, report.problems - report.correct))
        for example in report.examples {
            let prompt = String(example.prefix { $0 != " " })
            #expect(dataset.heldOutProblems.contains { $0.prompt == prompt })
            #expect(example.contains(" → "))
            #expect(example.hasSuffix(")"))
            #expect(example.contains("(expected "))
        }
        #expect(try ArithmeticEvaluator.evaluate(model: model, problems: dataset.heldOutProblems) == report)
        let decoded = try JSONDecoder().decode(ArithmeticReport.self, from: JSONEncoder().encode(report))
        #expect(decoded == report)
    }

    @Test func invalidRequestsThrow() throws {
        let model = try GPT(configuration, seed: 3)
        #expect(throws: ConvoyError.self) { try ArithmeticEvaluator.evaluate(model: model, problems: []) }
        #expect(throws: ConvoyError.self) { try ArithmeticEvaluator.evaluate(model: model, problems: [ArithmeticProblem(a: 1, b: 2)], batchSize: 0) }
    }
}
