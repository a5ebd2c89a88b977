import ConvoyNN
import ConvoyTensor

/// Exact-match accuracy of a model on addition problems.
public struct ArithmeticReport: Sendable, Codable, Equatable {
    /// Problems evaluated.
    public var problems: Int
    /// Problems whose generated answer matched exactly.
    public var correct: Int
    /// `correct / problems`.
    public var accuracy: Double
    /// A few wrong answers, for people reading logs: `"123+456= → 578 (expected 579)"`.
    public var examples: [String]

    public init(problems: Int, correct: Int, accuracy: Double, examples: [String]) {
        self.problems = problems
        self.correct = correct
        self.accuracy = accuracy
        self.examples = examples
    }
}

/// Scores a model on ``ArithmeticProblem``s: greedy generation after each prompt until a newline, compared
/// character for character with the answer.
public enum ArithmeticEvaluator {
    /// How many wrong answers a report quotes.
    public static let exampleLimit = 5

    /// Greedily completes every problem's prompt and counts exact matches with its answer.
    ///
    /// A row stops at '\n' or after `digits + 2` tokens (the longest sum, digits + 1, and its newline), where
    /// `digits` is the widest operand among `problems`; an answer with no newline in that budget is wrong,
    /// because it is necessarily longer than the sum.
    ///
    /// - Parameter batchSize: Problems generated together (bounds memory; the result does not depend on it).
    /// - Throws: ``ConvoyTensor/ConvoyError/invalidArgument(_:)`` when `problems` is empty or `batchSize` is
    ///   not positive, or when a prompt does not fit the model's vocabulary.
    public static func evaluate(model: any LanguageModel, problems: [ArithmeticProblem], batchSize: Int = 512) throws -> ArithmeticReport {
        guard !problems.isEmpty else {
            throw ConvoyError.invalidArgument("no arithmetic problems to evaluate; pass at least one")
        }
        guard batchSize > 0 else {
            throw ConvoyError.invalidArgument("evaluation batch size must be positive, got \(batchSize)")
        }
        let tokenizer = ByteTokenizer()
        let generator = TextGenerator(model: model)
        let digits = problems.map { max(String($0.a).count, String($0.b).count) }.max()!
        let newline = Int32(UInt8(ascii: "\n"))
        var correct = 0
        var examples: [String] = []
        for start in stride(from: 0, to: problems.count, by: batchSize) {
            let batch = problems[start..<min(start + batchSize, problems.count)]
            let completions = try generator.generate(prompts: batch.map { tokenizer.encode($0.prompt) }, maxNewTokens: digits + 2,
                                                     temperature: 0, seed: 0, stopToken: newline)
            for (problem, completion) in zip(batch, completions) {
                let produced = tokenizer.decode(completion)
                if produced == problem.answer {
                    correct += 1
                } else if examples.count < exampleLimit {
                    // debugDescription-style escaping would add quotes; only control characters need showing.
                    let shown = produced.unicodeScalars.map { $0.properties.generalCategory == .control ? $0.escaped(asASCII: true) : String($0) }.joined()
                    examples.append("\(problem.prompt) → \(shown) (expected \(problem.answer))")
                }
            }
        }
        return ArithmeticReport(problems: problems.count, correct: correct, accuracy: Double(correct) / Double(problems.count), examples: examples)
    }
}
