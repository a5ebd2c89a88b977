import ConvoyNN
import ConvoyTensor
import Foundation
import Testing

// MARK: - PyTorch reference (scripts/optimizer_reference.py)

/// `Fixtures/optimizer-reference.json`: a two-parameter problem run through torch.optim for 5 steps.
private struct OptimizerReference: Decodable {
    struct Case: Decodable {
        let name: String
        let optimizer: String
        let lr: Float
        let momentum: Float
        let dampening: Float
        let nesterov: Bool
        let weight_decay: Float
        let beta1: Float
        let beta2: Float
        let eps: Float
        /// Parameter values after each step.
        let steps: [[String: [Float]]]
    }

    struct Clipping: Decodable {
        let max_norm: Float
        let total_norm: Double
        /// Gradients after clipping.
        let gradients: [String: [Float]]
    }

    let shapes: [String: [Int]]
    let initial: [String: [Float]]
    let gradients: [[String: [Float]]]
    let cases: [Case]
    let clipping: [Clipping]

    static let names = ["p1", "p2"]

    static let shared: OptimizerReference = {
        let url = Bundle.module.resourceURL!.appendingPathComponent("Fixtures/optimizer-reference.json")
        let data = try! Data(contentsOf: url)
        return try! JSONDecoder().decode(OptimizerReference.self, from: data)
    }()

    func testCase(_ name: String) -> Case { cases.first { $0.name == name }! }

    /// Fresh parameters (named `p1`, `p2`) with the given values (default: the initial values).
    func makeParameters(_ values: [String: [Float]]? = nil) -> [Parameter] {
        Self.names.map { name in
            let parameter = Tensor(shape: shapes[name]!, values: (values ?? initial)[name]!, requiresGrad: true)
            parameter.name = name
            return parameter
        }
    }

    /// Sets every parameter's gradient to the fixture's gradient for `step`.
    func setGradients(_ parameters: [Parameter], step: Int) {
        for parameter in parameters {
            let name = parameter.name!
            parameter.grad = Tensor(shape: shapes[name]!, values: gradients[step][name]!)
        }
    }
}

/// An optimizer with a fixture case's hyper-parameters.
private func makeOptimizer(_ c: OptimizerReference.Case, _ parameters: [Parameter]) -> any Optimizer {
    switch c.optimizer {
    case "sgd":
        return SGD(parameters, learningRate: c.lr, momentum: c.momentum, dampening: c.dampening, nesterov: c.nesterov, weightDecay: c.weight_decay)
    case "adam":
        return Adam(parameters, learningRate: c.lr, beta1: c.beta1, beta2: c.beta2, epsilon: c.eps, weightDecay: c.weight_decay)
    case "adamw":
        return Adam.adamW([ParameterGroup(parameters)], learningRate: c.lr, beta1: c.beta1, beta2: c.beta2, epsilon: c.eps, weightDecay: c.weight_decay)
    default:
        fatalError("unknown optimizer \(c.optimizer)")
    }
}

/// Element-wise |actual − expected| ≤ 1e-6·|expected| + 1e-7; records the worst element on failure.
private func expectClose(_ actual: [Float], _ expected: [Float], relative: Double = 1e-6, absolute: Double = 1e-7,
                         _ what: @autoclosure () -> String, sourceLocation: SourceLocation = #_sourceLocation) {
    guard actual.count == expected.count else {
        Issue.record("\(what()): \(actual.count) values, expected \(expected.count)", sourceLocation: sourceLocation)
        return
    }
    for (i, (a, e)) in zip(actual, expected).enumerated() {
        let error = abs(Double(a) - Double(e))
        if error > relative * abs(Double(e)) + absolute {
            Issue.record("\(what())[\(i)]: \(a), PyTorch \(e) (error \(error))", sourceLocation: sourceLocation)
            return
        }
    }
}

private let caseNames = ["sgd", "sgd_momentum", "sgd_nesterov_decay", "sgd_dampening", "adam_l2", "adamw"]

// MARK: - Tests

@Suite("Optimizer")
struct OptimizerTests {
    private let reference = OptimizerReference.shared

    @Test("matches torch.optim after each of 5 steps", arguments: caseNames)
    func matchesPyTorch(_ name: String) {
        let c = reference.testCase(name)
        let parameters = reference.makeParameters()
        let optimizer = makeOptimizer(c, parameters)
        #expect(c.steps.count == 5)
        for (step, expected) in c.steps.enumerated() {
            reference.setGradients(parameters, step: step)
            optimizer.step()
            for parameter in parameters {
                expectClose(parameter.toArray(), expected[parameter.name!]!, "\(name) step \(step + 1) \(parameter.name!)")
            }
        }
    }

    @Test("a group's weight decay overrides the optimizer's")
    func groupWeightDecay() {
        let c = reference.testCase("sgd_nesterov_decay")
        let parameters = reference.makeParameters()
        let optimizer = SGD([ParameterGroup(parameters, weightDecay: c.weight_decay)], learningRate: c.lr,
                            momentum: c.momentum, nesterov: true, weightDecay: 0)
        for (step, expected) in c.steps.enumerated() {
            reference.setGradients(parameters, step: step)
            optimizer.step()
            for parameter in parameters {
                expectClose(parameter.toArray(), expected[parameter.name!]!, "step \(step + 1) \(parameter.name!)")
            }
        }
    }

    @Test("state() after 3 steps, load into a fresh optimizer: the next 2 steps are bit-identical", arguments: caseNames)
    func saveAndRestore(_ name: String) throws {
        let c = reference.testCase(name)
        let original = reference.makeParameters()
        let optimizer = makeOptimizer(c, original)
        for step in 0..<3 {
            reference.setGradients(original, step: step)
            optimizer.step()
        }
        let saved = optimizer.state()
        if c.momentum != 0 || c.optimizer != "sgd" { #expect(!saved.tensors.isEmpty) }

        let copies = reference.makeParameters(Dictionary(uniqueKeysWithValues: original.map { ($0.name!, $0.toArray()) }))
        let restored = makeOptimizer(c, copies)
        try restored.load(saved)

        for step in 3..<5 {
            reference.setGradients(original, step: step)
            reference.setGradients(copies, step: step)
            optimizer.step()
            restored.step()
        }
        for (a, b) in zip(original, copies) {
            #expect(a.toArray().map(\.bitPattern) == b.toArray().map(\.bitPattern), "\(name) \(a.name!)")
            // And both still match PyTorch after step 5.
            expectClose(b.toArray(), c.steps[4][b.name!]!, "\(name) restored step 5 \(b.name!)")
        }
    }

    @Test("load() of a state saved for differently shaped parameters throws .incompatible", arguments: ["sgd_momentum", "adamw"])
    func loadRejectsOtherShapes(_ name: String) {
        let c = reference.testCase(name)
        let parameters = reference.makeParameters()
        let optimizer = makeOptimizer(c, parameters)
        reference.setGradients(parameters, step: 0)
        optimizer.step()
        let saved = optimizer.state()

        // Same names, p1 transposed to [4, 3].
        let other = reference.makeParameters()
        let reshaped = Tensor(shape: [4, 3], values: other[0].toArray(), requiresGrad: true)
        reshaped.name = "p1"
        let target = makeOptimizer(c, [reshaped, other[1]])
        let error = #expect(throws: ConvoyError.self) { try target.load(saved) }
        guard case .incompatible? = error else {
            Issue.record("expected ConvoyError.incompatible, got \(String(describing: error))")
            return
        }
    }

    @Test("parameters without a gradient are left untouched", arguments: caseNames)
    func skipsParametersWithoutGradient(_ name: String) {
        let c = reference.testCase(name)
        let parameters = reference.makeParameters()
        let optimizer = makeOptimizer(c, parameters)
        let before = parameters.map { $0.toArray().map(\.bitPattern) }
        for step in 0..<3 {
            reference.setGradients(parameters, step: step)
            parameters[1].grad = nil
            optimizer.step()
        }
        #expect(parameters[1].toArray().map(\.bitPattern) == before[1], "\(name): p2 changed without a gradient")
        #expect(parameters[0].toArray().map(\.bitPattern) != before[0], "\(name): p1 did not change")
    }

    // MARK: Gradient clipping

    @Test("clip() matches torch.nn.utils.clip_grad_norm_ when it clips")
    func clippingClips() throws {
        let expected = try #require(reference.clipping.first { $0.max_norm < 1 })
        let parameters = reference.makeParameters()
        reference.setGradients(parameters, step: 0)
        let norm = GradientClipping.globalNorm(parameters)
        #expect(abs(norm - expected.total_norm) <= 1e-6 * expected.total_norm)
        #expect(norm > Double(expected.max_norm))

        let returned = GradientClipping.clip(parameters, maxNorm: expected.max_norm)
        #expect(returned == norm, "clip returns the norm before clipping")
        for parameter in parameters {
            expectClose(parameter.grad!.toArray(), expected.gradients[parameter.name!]!, "clipped grad \(parameter.name!)")
        }
        let after = GradientClipping.globalNorm(parameters)
        #expect(abs(after - Double(expected.max_norm)) <= 1e-5 * Double(expected.max_norm))
    }

    @Test("clip() leaves gradients under the limit unchanged")
    func clippingUnderLimit() throws {
        let expected = try #require(reference.clipping.first { $0.max_norm > 1 })
        let parameters = reference.makeParameters()
        reference.setGradients(parameters, step: 0)
        let before = parameters.map { $0.grad!.toArray().map(\.bitPattern) }
        let returned = GradientClipping.clip(parameters, maxNorm: expected.max_norm)
        #expect(abs(returned - expected.total_norm) <= 1e-6 * expected.total_norm)
        #expect(parameters.map { $0.grad!.toArray().map(\.bitPattern) } == before)
        for parameter in parameters {
            expectClose(parameter.grad!.toArray(), expected.gradients[parameter.name!]!, "grad \(parameter.name!)")
        }
    }

    @Test("globalNorm skips parameters without a gradient")
    func globalNormSkipsMissingGradients() {
        let parameters = reference.makeParameters()
        #expect(GradientClipping.globalNorm(parameters) == 0)
        reference.setGradients(parameters, step: 1)
        parameters[0].grad = nil
        let g = reference.gradients[1]["p2"]!
        let expected = g.reduce(0.0) { $0 + Double($1) * Double($1) }.squareRoot()
        #expect(abs(GradientClipping.globalNorm(parameters) - expected) <= 1e-12)
    }

    // MARK: Learning-rate schedules

    @Test("ConstantSchedule returns its rate at every step")
    func constantSchedule() {
        let schedule = ConstantSchedule(3e-4)
        for step in [0, 1, 17, 1000, 1_000_000] { #expect(schedule.learningRate(at: step) == 3e-4) }
    }

    /// The documented formula, in Double.
    private func warmupCosine(peak: Double, minimum: Double, warmup: Int, total: Int, step: Int) -> Double {
        if step < warmup { return peak * Double(step + 1) / Double(warmup) }
        let progress = min(1, Double(step - warmup) / Double(max(1, total - warmup)))
        return minimum + (peak - minimum) * 0.5 * (1 + cos(Double.pi * progress))
    }

    @Test("WarmupCosineSchedule: linear warm-up, cosine decay to the minimum, then flat")
    func warmupCosineSchedule() {
        let peak: Float = 6e-4, minimum: Float = 6e-5
        let schedule = WarmupCosineSchedule(peak: peak, minimum: minimum, warmupSteps: 10, totalSteps: 100)
        for step in 0...150 {
            let expected = warmupCosine(peak: Double(peak), minimum: Double(minimum), warmup: 10, total: 100, step: step)
            let actual = Double(schedule.learningRate(at: step))
            #expect(abs(actual - expected) <= 1e-6 * expected, "step \(step): \(actual), formula \(expected)")
        }
        // Warm-up ramp: (step + 1)/warmup of the peak, reaching the peak on the last warm-up step.
        #expect(schedule.learningRate(at: 0) == peak / 10)
        #expect(abs(schedule.learningRate(at: 4) - peak / 2) <= 1e-6 * peak)
        #expect(abs(schedule.learningRate(at: 9) - peak) <= 1e-6 * peak)
        for step in 0..<9 { #expect(schedule.learningRate(at: step) < schedule.learningRate(at: step + 1)) }
        // Decay starts at the peak and ends at exactly the minimum.
        #expect(abs(schedule.learningRate(at: 10) - peak) <= 1e-6 * peak)
        #expect(schedule.learningRate(at: 100) == minimum)
        #expect(schedule.learningRate(at: 1000) == minimum)
        // Monotone decay after warm-up.
        for step in 10..<100 {
            #expect(schedule.learningRate(at: step + 1) < schedule.learningRate(at: step), "not decaying at step \(step)")
        }
        // Halfway through the decay: the midpoint of peak and minimum.
        #expect(abs(schedule.learningRate(at: 55) - (peak + minimum) / 2) <= 1e-6 * peak)
    }

    @Test("WarmupCosineSchedule without warm-up starts at the peak")
    func cosineWithoutWarmup() {
        let schedule = WarmupCosineSchedule(peak: 1, minimum: 0, warmupSteps: 0, totalSteps: 4)
        let expected: [Float] = [1, 0.8535534, 0.5, 0.14644662, 0, 0]
        for (step, value) in expected.enumerated() {
            #expect(abs(schedule.learningRate(at: step) - value) <= 1e-6, "step \(step)")
        }
    }

    // MARK: Parameter groups

    @Test("decayingMatrices: rank ≥ 2 tensors decay, biases and norms do not")
    func decayingMatrices() throws {
        let model = try GPT(GPTConfiguration(vocabularySize: 16, contextLength: 8, layers: 1, heads: 2, width: 8), seed: 1)
        let groups = ParameterGroup.decayingMatrices(of: model, weightDecay: 0.1)
        #expect(groups.count == 2)
        let decaying = groups[0], plain = groups[1]
        #expect(decaying.weightDecay == 0.1)
        #expect(plain.weightDecay == 0)
        #expect(!decaying.parameters.isEmpty && !plain.parameters.isEmpty)
        #expect(decaying.parameters.allSatisfy { $0.rank >= 2 })
        #expect(plain.parameters.allSatisfy { $0.rank < 2 })

        // Every parameter exactly once.
        let all = model.parameters.map(ObjectIdentifier.init)
        let grouped = (decaying.parameters + plain.parameters).map(ObjectIdentifier.init)
        #expect(grouped.count == all.count)
        #expect(Set(grouped) == Set(all))

        let decayingNames = Set(decaying.parameters.compactMap(\.name))
        let plainNames = Set(plain.parameters.compactMap(\.name))
        for name in ["wte.weight", "wpe.weight", "h.0.attn.c_attn.weight", "h.0.mlp.c_fc.weight"] {
            #expect(decayingNames.contains(name), "\(name) should decay")
        }
        for name in ["ln_f.weight", "ln_f.bias", "h.0.ln_1.weight", "h.0.attn.c_attn.bias"] {
            #expect(plainNames.contains(name), "\(name) should not decay")
        }
    }
}
