import ConvoyTensor
import ConvoyTrain
import Testing

/// Parses "a+b=c\n" strictly (digits only, one '+', one '=', a final newline); nil when the shape is wrong.
private func parseLine(_ line: String) -> (a: Int, b: Int, sum: Int)? {
    guard line.hasSuffix("\n") else { return nil }
    let body = line.dropLast()
    let sides = body.split(separator: "=", omittingEmptySubsequences: false)
    guard sides.count == 2 else { return nil }
    let operands = sides[0].split(separator: "+", omittingEmptySubsequences: false)
    guard operands.count == 2 else { return nil }
    let parts = [operands[0], operands[1], sides[1]]
    guard parts.allSatisfy({ !$0.isEmpty && $0.allSatisfy { $0.isASCII && $0.isNumber } }) else { return nil }
    guard let a = Int(parts[0]), let b = Int(parts[1]), let sum = Int(parts[2]) else { return nil }
    return (a, b, sum)
}

@Suite struct ArithmeticDatasetTests {
    @Test func lineParserRejectsMalformedLines() {
        #expect(parseLine("47+385=432\n") != nil)
        #expect(parseLine("47+385=432") == nil)
        #expect(parseLine("47-385=432\n") == nil)
        #expect(parseLine("47+385=\n") == nil)
        #expect(parseLine("4a+385=432\n") == nil)
    }

    @Test func problem47Plus385() {
        let problem = ArithmeticProblem(a: 47, b: 385)
        #expect(problem.prompt == "47+385=")
        #expect(problem.answer == "432")
        #expect(problem.line == "47+385=432\n")
    }

    @Test(arguments: [1, 3, 5])
    func trainingLinesAreCorrectAdditions(digits: Int) throws {
        let data = try ArithmeticDataset(seed: 11, digits: digits,
                                         contextLength: ArithmeticDataset.longestLine(digits: digits), heldOutCount: 5)
        let limit = (0..<digits).reduce(1) { result, _ in result * 10 }
        for index in 0..<2000 {
            let problem = data.trainingProblem(index)
            guard let parsed = parseLine(problem.line) else {
                Issue.record("line \(index) is malformed: \(problem.line.debugDescription)")
                continue
            }
            #expect(parsed.a == problem.a && parsed.b == problem.b)
            #expect(parsed.a + parsed.b == parsed.sum, "wrong sum in \(problem.line.debugDescription)")
            #expect((0..<limit).contains(parsed.a) && (0..<limit).contains(parsed.b))
            #expect(problem.line.utf8.count <= ArithmeticDataset.longestLine(digits: digits))
        }
    }

    @Test func trainingProblemsAreDeterministicAndVaried() throws {
        let first = try ArithmeticDataset(seed: 3)
        let again = try ArithmeticDataset(seed: 3)
        let other = try ArithmeticDataset(seed: 4)
        let problems = (0..<500).map(first.trainingProblem)
        #expect(problems == (0..<500).reversed().map(again.trainingProblem).reversed())
        #expect(problems != (0..<500).map(other.trainingProblem))
        #expect(Set(problems).count > 450)
    }

    @Test func heldOutProblemsNeverAppearInTraining() throws {
        let data = try ArithmeticDataset(seed: 5, digits: 3, contextLength: 16, heldOutCount: 1000)
        let heldOut = Set(data.heldOutProblems)
        #expect(data.heldOutProblems.allSatisfy(data.isHeldOut))
        var leaked = 0
        for index in 0..<100_000 where heldOut.contains(data.trainingProblem(index)) { leaked += 1 }
        #expect(leaked == 0)
    }

    @Test func heldOutListIsDeterministicDistinctAndSized() throws {
        let first = try ArithmeticDataset(seed: 21, heldOutCount: 700)
        let again = try ArithmeticDataset(seed: 21, heldOutCount: 700)
        let other = try ArithmeticDataset(seed: 22, heldOutCount: 700)
        #expect(first.heldOutProblems.count == 700)
        #expect(Set(first.heldOutProblems).count == 700)
        #expect(first.heldOutProblems == again.heldOutProblems)
        #expect(first.heldOutProblems != other.heldOutProblems)
        // One-digit operands have 100 problems; 10 held out must still be distinct.
        let small = try ArithmeticDataset(seed: 21, digits: 1, contextLength: 7, heldOutCount: 10)
        #expect(Set(small.heldOutProblems).count == 10)
    }

    @Test func onlyAnswerPositionsAreTargets() throws {
        let context = 16
        let data = try ArithmeticDataset(seed: 9, contextLength: context)
        #expect(Tensor.ignoredTarget == -1)
        for index in 0..<500 {
            let problem = data.trainingProblem(index)
            let example = data.trainingExample(index)
            let line = problem.line.utf8.map { Int32($0) }
            let equalsPosition = problem.prompt.utf8.count - 1
            #expect(example.inputs.count == context && example.targets.count == context)
            #expect(Array(example.inputs.prefix(line.count)) == line)
            #expect(example.inputs[line.count...].allSatisfy { $0 == Int32(UInt8(ascii: "\n")) })
            for position in 0..<context {
                if position >= equalsPosition && position < line.count - 1 {
                    #expect(example.targets[position] == example.inputs[position + 1])
                } else {
                    #expect(example.targets[position] == Tensor.ignoredTarget,
                            "position \(position) of \(problem.line.debugDescription) should be ignored")
                }
            }
            // The counted targets spell the answer and its newline.
            let counted = example.targets.filter { $0 != Tensor.ignoredTarget }
            #expect(ByteTokenizer().decode(counted) == problem.answer + "\n")
            #expect(example.countedTargets == problem.answer.utf8.count + 1)
        }
    }

    @Test func validationExamplesAreTheHeldOutProblems() throws {
        let data = try ArithmeticDataset(seed: 13, heldOutCount: 50)
        #expect(data.validationCount == 50)
        for index in 0..<data.validationCount {
            let problem = data.heldOutProblems[index]
            let example = data.validationExample(index)
            #expect(example == data.example(for: problem))
            #expect(Array(example.inputs.prefix(problem.line.utf8.count)) == problem.line.utf8.map { Int32($0) })
        }
    }

    @Test func refusesAContextShorterThanTheLongestLine() throws {
        // 999+999=1998\n is 13 bytes.
        #expect(ArithmeticDataset.longestLine(digits: 3) == 13)
        #expect(ArithmeticProblem(a: 999, b: 999).line.utf8.count == 13)
        let error = #expect(throws: ConvoyError.self) {
            try ArithmeticDataset(seed: 1, digits: 3, contextLength: 12)
        }
        guard case .invalidConfiguration(let text) = error else {
            Issue.record("expected invalidConfiguration, got \(String(describing: error))")
            return
        }
        #expect(text.contains("13"))
        let fits = try ArithmeticDataset(seed: 1, digits: 3, contextLength: 13)
        #expect(fits.contextLength == 13)
    }

    @Test(arguments: [0, -1, 10])
    func refusesBadDigitCounts(digits: Int) {
        let error = #expect(throws: ConvoyError.self) {
            try ArithmeticDataset(seed: 1, digits: digits, contextLength: 64)
        }
        #expect(error.map { "\($0)" }?.contains("digits") == true)
    }

    @Test(arguments: [0, 11])
    func refusesAHeldOutCountOutsideTheRange(count: Int) {
        // One-digit operands have 100 problems, of which at most a tenth may be held out.
        let error = #expect(throws: ConvoyError.self) {
            try ArithmeticDataset(seed: 1, digits: 1, contextLength: 7, heldOutCount: count)
        }
        #expect(error.map { "\($0)" }?.contains("held-out") == true)
    }
}
