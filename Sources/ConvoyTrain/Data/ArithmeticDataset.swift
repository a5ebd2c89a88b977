import ConvoyTensor

/// One addition problem `a+b=` with its answer.
public struct ArithmeticProblem: Sendable, Hashable {
    public var a: Int
    public var b: Int

    public init(a: Int, b: Int) {
        self.a = a
        self.b = b
    }

    /// The text the model is given: "47+385=".
    public var prompt: String { "\(a)+\(b)=" }
    /// The text the model must produce after the prompt: "432".
    public var answer: String { String(a + b) }
    /// A full training line: "47+385=432\n".
    public var line: String { prompt + answer + "\n" }
}

/// The built-in generated dataset: addition problems such as `47+385=432`, one per sequence.
///
/// Operands are uniform in 0 ..< 10^digits. A fixed set of held-out problems, drawn from the seed, is never
/// used for training; evaluation measures exact-match accuracy on them. Each training sequence is one
/// problem, padded with newlines; only the answer and its closing newline are predicted (targets over the
/// prompt and the padding are ignored), so the model spends its capacity on the sums.
public struct ArithmeticDataset: TrainingDataset {
    /// Maximum digits of each operand.
    public let digits: Int
    public let contextLength: Int
    public let seed: UInt64
    /// The held-out problems, in a fixed order.
    public let heldOutProblems: [ArithmeticProblem]
    private let heldOutSet: Set<ArithmeticProblem>
    private let tokenizer = ByteTokenizer()

    /// The longest line: two operands, '+', '=', a sum one digit longer, and '\n'.
    public static func longestLine(digits: Int) -> Int { 2 * digits + 2 + (digits + 1) + 1 }

    /// Throws when the problems do not fit the context or the held-out set is too large.
    public init(seed: UInt64, digits: Int = 3, contextLength: Int = 16, heldOutCount: Int = 1000) throws {
        guard (1...9).contains(digits) else {
            throw ConvoyError.invalidConfiguration("arithmetic digits must be in 1...9, got \(digits)")
        }
        guard contextLength >= Self.longestLine(digits: digits) else {
            throw ConvoyError.invalidConfiguration("context \(contextLength) is too short for \(digits)-digit additions; use at least \(Self.longestLine(digits: digits))")
        }
        let space = Int(Self.pow10(digits)) * Int(Self.pow10(digits))
        guard heldOutCount > 0, heldOutCount <= space / 10 else {
            throw ConvoyError.invalidConfiguration("held-out problem count must be in 1...\(space / 10) for \(digits)-digit operands, got \(heldOutCount)")
        }
        self.digits = digits
        self.contextLength = contextLength
        self.seed = seed
        var problems: [ArithmeticProblem] = []
        var seen = Set<ArithmeticProblem>()
        var counter: UInt64 = 0
        let heldOutStream = PhiloxRandom(seed: seed, stream: PhiloxRandom.streamID("arithmetic.held-out"))
        while problems.count < heldOutCount {
            let problem = Self.problem(from: heldOutStream.block(counter), digits: digits)
            counter += 1
            if seen.insert(problem).inserted { problems.append(problem) }
        }
        heldOutProblems = problems
        heldOutSet = seen
    }

    private static func pow10(_ n: Int) -> UInt32 { (0..<n).reduce(1) { result, _ in result * 10 } }

    private static func problem(from words: (UInt32, UInt32, UInt32, UInt32), digits: Int) -> ArithmeticProblem {
        let limit = pow10(digits)
        return ArithmeticProblem(a: Int(words.0 % limit), b: Int(words.1 % limit))
    }

    /// The training problem with global index `index` (never a held-out one).
    public func trainingProblem(_ index: Int) -> ArithmeticProblem {
        var attempt: UInt64 = 0
        while true {
            let stream = PhiloxRandom(seed: seed, stream: PhiloxRandom.mix(PhiloxRandom.streamID("arithmetic.train"), attempt))
            let problem = Self.problem(from: stream.block(UInt64(index)), digits: digits)
            if !heldOutSet.contains(problem) { return problem }
            attempt += 1
        }
    }

    /// Whether a problem is in the held-out set.
    public func isHeldOut(_ problem: ArithmeticProblem) -> Bool { heldOutSet.contains(problem) }

    /// The example for one problem: its line, newline-padded; only answer positions are targets.
    public func example(for problem: ArithmeticProblem) -> TrainingExample {
        let promptLength = problem.prompt.utf8.count
        let line = tokenizer.encode(problem.line)
        let newline = Int32(UInt8(ascii: "\n"))
        var inputs = [Int32](repeating: newline, count: contextLength)
        var targets = [Int32](repeating: Tensor.ignoredTarget, count: contextLength)
        for t in 0..<line.count { inputs[t] = line[t] }
        // Position t predicts token t+1; the first answer token is predicted at the '=' (promptLength − 1).
        for t in (promptLength - 1)..<(line.count - 1) { targets[t] = line[t + 1] }
        return TrainingExample(inputs: inputs, targets: targets)
    }

    public func trainingExample(_ index: Int) -> TrainingExample { example(for: trainingProblem(index)) }

    public var validationCount: Int { heldOutProblems.count }

    public func validationExample(_ index: Int) -> TrainingExample { example(for: heldOutProblems[index]) }

    public var summary: String { "arithmetic: additions of up to \(digits)-digit operands, \(heldOutProblems.count) held out" }
}
