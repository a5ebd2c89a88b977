import ConvoyNN
import ConvoyTensor
import Foundation
import Testing

// MARK: - Fixtures and helpers

/// The PyTorch reference of `OptimizerTests` (`Fixtures/optimizer-reference.json`), decoded again here.
private struct FusedReference: Decodable {
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
        let steps: [[String: [Float]]]
    }

    let shapes: [String: [Int]]
    let initial: [String: [Float]]
    let gradients: [[String: [Float]]]
    let cases: [Case]

    static let names = ["p1", "p2"]

    static let shared: FusedReference = {
        let url = Bundle.module.resourceURL!.appendingPathComponent("Fixtures/optimizer-reference.json")
        return try! JSONDecoder().decode(FusedReference.self, from: try! Data(contentsOf: url))
    }()

    func testCase(_ name: String) -> Case { cases.first { $0.name == name }! }

    func makeParameters(_ values: [String: [Float]]? = nil) -> [Parameter] {
        Self.names.map { name in
            let parameter = Tensor(shape: shapes[name]!, values: (values ?? initial)[name]!, requiresGrad: true)
            parameter.name = name
            return parameter
        }
    }

    /// Replaces every gradient by a fresh tensor (not a view), as the per-tensor tests do.
    func setGradients(_ parameters: [Parameter], step: Int) {
        for parameter in parameters {
            parameter.grad = Tensor(shape: shapes[parameter.name!]!, values: gradients[step][parameter.name!]!)
        }
    }

    /// Writes the step's gradients into the existing gradient tensors in place (keeping fused views).
    func writeGradients(_ parameters: [Parameter], step: Int) {
        for parameter in parameters {
            let values = gradients[step][parameter.name!]!
            let grad = parameter.grad!
            values.withUnsafeBufferPointer { grad.contiguousFloats.update(from: $0.baseAddress!, count: values.count) }
        }
    }
}

private let fixtureCases = ["sgd", "sgd_momentum", "sgd_nesterov_decay", "sgd_dampening", "adam_l2", "adamw"]

/// The fixture case's optimizer, per-tensor or fused.
private func makeOptimizer(_ c: FusedReference.Case, _ groups: [ParameterGroup], fused: Bool,
                           layout: FlatParameterBuffer.GradientLayout = .flat, placement: FlatParameterBuffer.Placement = .packed) throws -> any Optimizer {
    switch (c.optimizer, fused) {
    case ("sgd", false):
        return SGD(groups, learningRate: c.lr, momentum: c.momentum, dampening: c.dampening, nesterov: c.nesterov, weightDecay: c.weight_decay)
    case ("sgd", true):
        return try FusedSGD(groups, learningRate: c.lr, momentum: c.momentum, dampening: c.dampening, nesterov: c.nesterov, weightDecay: c.weight_decay, gradientLayout: layout, placement: placement)
    case ("adam", false):
        return Adam(groups, learningRate: c.lr, beta1: c.beta1, beta2: c.beta2, epsilon: c.eps, weightDecay: c.weight_decay)
    case ("adam", true):
        return try FusedAdam(groups, learningRate: c.lr, beta1: c.beta1, beta2: c.beta2, epsilon: c.eps, weightDecay: c.weight_decay, gradientLayout: layout, placement: placement)
    case ("adamw", false):
        return Adam.adamW(groups, learningRate: c.lr, beta1: c.beta1, beta2: c.beta2, epsilon: c.eps, weightDecay: c.weight_decay)
    case ("adamw", true):
        return try FusedAdam.adamW(groups, learningRate: c.lr, beta1: c.beta1, beta2: c.beta2, epsilon: c.eps, weightDecay: c.weight_decay, gradientLayout: layout, placement: placement)
    default:
        fatalError("unknown optimizer \(c.optimizer)")
    }
}

private func bits(_ parameters: [Parameter]) -> [[UInt32]] { parameters.map { $0.toArray().map(\.bitPattern) } }

/// Records the first element where two parameter lists differ in bits (a short message, not the arrays).
private func expectSameBits(_ a: [Parameter], _ b: [Parameter], _ what: String, sourceLocation: SourceLocation = #_sourceLocation) {
    let x = bits(a), y = bits(b)
    guard x != y else { return }
    for (i, (u, v)) in zip(x, y).enumerated() where u != v {
        let j = (0..<min(u.count, v.count)).first { u[$0] != v[$0] } ?? min(u.count, v.count)
        let values = j < min(u.count, v.count) ? "\(Float(bitPattern: u[j])) vs \(Float(bitPattern: v[j]))" : "lengths \(u.count) vs \(v.count)"
        Issue.record("\(what): \(a[i].name ?? "#\(i)")[\(j)] differs: \(values)", sourceLocation: sourceLocation)
        return
    }
    Issue.record("\(what): \(x.count) vs \(y.count) parameters", sourceLocation: sourceLocation)
}

/// Records the first difference between two optimizer states (keys, shapes, bits, scalars).
private func expectSameState(_ a: OptimizerState, _ b: OptimizerState, _ what: String, sourceLocation: SourceLocation = #_sourceLocation) {
    #expect(a.scalars == b.scalars, "\(what): scalars", sourceLocation: sourceLocation)
    guard Set(a.tensors.keys) == Set(b.tensors.keys) else {
        Issue.record("\(what): keys \(a.tensors.keys.sorted()) vs \(b.tensors.keys.sorted())", sourceLocation: sourceLocation)
        return
    }
    for key in a.tensors.keys.sorted() {
        let x = a.tensors[key]!, y = b.tensors[key]!
        guard x.shape == y.shape else {
            Issue.record("\(what): \(key) has shape \(x.shape) vs \(y.shape)", sourceLocation: sourceLocation)
            return
        }
        if x.toArray().map(\.bitPattern) != y.toArray().map(\.bitPattern) {
            Issue.record("\(what): \(key) differs", sourceLocation: sourceLocation)
            return
        }
    }
}

private func expectClose(_ actual: [Float], _ expected: [Float], _ what: String, sourceLocation: SourceLocation = #_sourceLocation) {
    #expect(actual.count == expected.count, "\(what): count", sourceLocation: sourceLocation)
    for (i, (a, e)) in zip(actual, expected).enumerated() where abs(Double(a) - Double(e)) > 1e-6 * abs(Double(e)) + 1e-7 {
        Issue.record("\(what)[\(i)]: \(a), PyTorch \(e)", sourceLocation: sourceLocation)
        return
    }
}

private func flatBuffers(_ optimizer: any Optimizer) -> [FlatParameterBuffer] {
    (optimizer as? FusedSGD)?.flatBuffers ?? (optimizer as! FusedAdam).flatBuffers
}

private func segmentCounts(_ optimizer: any Optimizer) -> [Int] {
    (optimizer as? FusedSGD)?.lastStepSegmentCounts ?? (optimizer as! FusedAdam).lastStepSegmentCounts
}

/// Every parameter (and, for flat gradients, every gradient) is still a view of its slice of the buffer.
private func expectViews(_ optimizer: any Optimizer, gradients: Bool, _ what: String, sourceLocation: SourceLocation = #_sourceLocation) {
    for flat in flatBuffers(optimizer) {
        for (index, parameter) in flat.parameters.enumerated() {
            #expect(parameter.storage === flat.values!.storage && parameter.offset == flat.offsets[index],
                    "\(what): \(parameter.name ?? "?") is not a view into the flat buffer", sourceLocation: sourceLocation)
            if gradients {
                #expect(parameter.grad?.storage === flat.gradients?.storage && parameter.grad?.offset == flat.offsets[index],
                        "\(what): grad of \(parameter.name ?? "?") is not a view into the flat gradient buffer", sourceLocation: sourceLocation)
            }
        }
    }
}

/// Deterministic token ids in 0 ..< vocabulary.
private func tokens(count: Int, vocabulary: Int, seed: UInt64) -> [Int32] {
    (0..<count).map { i in
        var x = seed &* 0x9E37_79B9_7F4A_7C15 &+ UInt64(i) &* 0xBF58_476D_1CE4_E5B9
        x ^= x >> 31
        x = x &* 0x94D0_49BB_1331_11EB
        x ^= x >> 29
        return Int32(x % UInt64(vocabulary))
    }
}

/// The GPT training comparison's optimizers.
enum FusedGPTCase: String, CaseIterable, CustomTestStringConvertible {
    case sgd, momentum, nesterovDecay, dampening, adam, adamW
    var testDescription: String { rawValue }

    func make(_ groups: [ParameterGroup], fused: Bool) throws -> any Optimizer {
        switch (self, fused) {
        case (.sgd, false): return SGD(groups, learningRate: 0.1)
        case (.sgd, true): return try FusedSGD(groups, learningRate: 0.1)
        case (.momentum, false): return SGD(groups, learningRate: 0.05, momentum: 0.9)
        case (.momentum, true): return try FusedSGD(groups, learningRate: 0.05, momentum: 0.9)
        case (.nesterovDecay, false): return SGD(groups, learningRate: 0.05, momentum: 0.9, nesterov: true, weightDecay: 0.01)
        case (.nesterovDecay, true): return try FusedSGD(groups, learningRate: 0.05, momentum: 0.9, nesterov: true, weightDecay: 0.01)
        case (.dampening, false): return SGD(groups, learningRate: 0.05, momentum: 0.8, dampening: 0.3)
        case (.dampening, true): return try FusedSGD(groups, learningRate: 0.05, momentum: 0.8, dampening: 0.3)
        case (.adam, false): return Adam(groups, learningRate: 3e-3, weightDecay: 0.01)
        case (.adam, true): return try FusedAdam(groups, learningRate: 3e-3, weightDecay: 0.01)
        case (.adamW, false): return Adam.adamW(groups, learningRate: 3e-3, beta2: 0.95)
        case (.adamW, true): return try FusedAdam.adamW(groups, learningRate: 3e-3, beta2: 0.95)
        }
    }
}

// MARK: - Tests

@Suite("FusedOptimizer")
struct FusedOptimizerTests {
    @Test func aFlatBufferTheSystemCannotHoldIsRefusedWithAnErrorNamingIt() {
        let parameter = Tensor(shape: [4], values: [1, 2, 3, 4], requiresGrad: true)
        parameter.name = "w"
        // A layout far larger than memory: the flat gradient buffer is refused before anything is rebound.
        do {
            _ = try FlatParameterBuffer([parameter], layout: (offsets: [0], totalCount: 1 << 60))
            Issue.record("a flat buffer of 2^60 elements should have been refused")
        } catch ConvoyError.outOfMemory(let message) {
            #expect(message.contains("the flat gradient buffer"), "\(message)")
        } catch {
            Issue.record("expected ConvoyError.outOfMemory, got \(error)")
        }
        #expect(parameter.toArray() == [1, 2, 3, 4], "the parameter keeps its values and storage")
    }

    private let reference = FusedReference.shared
    private let gptConfiguration = GPTConfiguration(vocabularySize: 32, contextLength: 8, layers: 2, heads: 2, width: 16)

    @Test("GPT, 5 steps: fused and per-tensor parameters are bit-identical", arguments: FusedGPTCase.allCases)
    func gptTrainingIsBitIdentical(_ which: FusedGPTCase) throws {
        let plainModel = try GPT(gptConfiguration, seed: 3)
        let fusedModel = try GPT(gptConfiguration, seed: 3)
        expectSameBits(plainModel.parameters, fusedModel.parameters, "same seed, same initial values")
        let plain = try which.make(ParameterGroup.decayingMatrices(of: plainModel, weightDecay: 0.1), fused: false)
        let fused = try which.make(ParameterGroup.decayingMatrices(of: fusedModel, weightDecay: 0.1), fused: true)
        #expect(flatBuffers(fused).count == 2, "matrices (decay 0.1) and vectors (decay 0) are two fused groups")
        expectSameBits(plainModel.parameters, fusedModel.parameters, "packing preserves values")
        expectViews(fused, gradients: true, "after construction")

        let batch = 2, time = 8
        for step in 0..<5 {
            let input = tokens(count: batch * time, vocabulary: 32, seed: UInt64(10 + step))
            let targets = tokens(count: batch * time, vocabulary: 32, seed: UInt64(20 + step))
            let plainLoss = plainModel.loss(input, targets: targets, batch: batch, time: time)
            let fusedLoss = fusedModel.loss(input, targets: targets, batch: batch, time: time)
            #expect(plainLoss.scalarValue.bitPattern == fusedLoss.scalarValue.bitPattern, "\(which) loss at step \(step)")
            try plainLoss.backward()
            try fusedLoss.backward()
            expectViews(fused, gradients: true, "after backward \(step)")
            GradientClipping.clip(plainModel.parameters, maxNorm: 1)
            GradientClipping.clip(fusedModel.parameters, maxNorm: 1)
            plain.step()
            fused.step()
            #expect(segmentCounts(fused) == [1, 1], "one kernel pass over each whole group")
            plain.zeroGradients()
            fused.zeroGradients()
            expectViews(fused, gradients: true, "after step and zeroGradients \(step)")
            #expect(fusedModel.parameters.allSatisfy { $0.grad!.toArray().allSatisfy { $0 == 0 } })
            expectSameBits(plainModel.parameters, fusedModel.parameters, "\(which) parameters after step \(step + 1)")
        }
        expectSameState(plain.state(), fused.state(), "\(which) states")
        #expect(plain.state().scalars == fused.state().scalars)
    }

    @Test("matches torch.optim (fixture) and the per-tensor optimizer bit for bit", arguments: fixtureCases)
    func matchesFixture(_ name: String) throws {
        let c = reference.testCase(name)
        let plainParameters = reference.makeParameters(), fusedParameters = reference.makeParameters()
        let plain = try makeOptimizer(c, [ParameterGroup(plainParameters)], fused: false)
        let fused = try makeOptimizer(c, [ParameterGroup(fusedParameters)], fused: true)
        for (step, expected) in c.steps.enumerated() {
            reference.setGradients(plainParameters, step: step)
            reference.setGradients(fusedParameters, step: step)
            plain.step()
            fused.step()
            #expect(segmentCounts(fused) == [2], "replaced gradients are separate allocations: one segment each")
            for parameter in fusedParameters {
                expectClose(parameter.toArray(), expected[parameter.name!]!, "\(name) step \(step + 1) \(parameter.name!)")
            }
            expectSameBits(plainParameters, fusedParameters, "\(name) step \(step + 1)")
        }
        expectViews(fused, gradients: false, name)
        expectSameState(plain.state(), fused.state(), "\(name)")
    }

    @Test("fixture gradients written into the flat gradient views: one segment, same results", arguments: fixtureCases)
    func matchesFixtureThroughFlatGradients(_ name: String) throws {
        let c = reference.testCase(name)
        let plainParameters = reference.makeParameters(), fusedParameters = reference.makeParameters()
        let plain = try makeOptimizer(c, [ParameterGroup(plainParameters)], fused: false)
        let fused = try makeOptimizer(c, [ParameterGroup(fusedParameters)], fused: true)
        for step in c.steps.indices {
            reference.setGradients(plainParameters, step: step)
            reference.writeGradients(fusedParameters, step: step)
            plain.step()
            fused.step()
            #expect(segmentCounts(fused) == [1])
            fused.zeroGradients()
            expectViews(fused, gradients: true, "\(name) step \(step + 1)")
        }
        expectSameBits(plainParameters, fusedParameters, "\(name)")
        expectSameState(plain.state(), fused.state(), "\(name)")
    }

    @Test("external gradients (views into another buffer, reversed): per-segment kernel, same results", arguments: fixtureCases)
    func externalGradients(_ name: String) throws {
        let c = reference.testCase(name)
        let plainParameters = reference.makeParameters(), fusedParameters = reference.makeParameters()
        // A "bucket" holding the gradients in reverse parameter order, as data parallelism lays them out.
        let counts = fusedParameters.map(\.count)
        let bucket = Tensor.zeros([counts.reduce(0, +)])
        var offset = 0
        for parameter in fusedParameters.reversed() {
            parameter.grad = Tensor(storage: bucket.storage, shape: parameter.shape, offset: offset)
            offset += parameter.count
        }
        let views = fusedParameters.map { $0.grad! }
        let plain = try makeOptimizer(c, [ParameterGroup(plainParameters)], fused: false)
        let fused = try makeOptimizer(c, [ParameterGroup(fusedParameters)], fused: true, layout: .external)
        #expect(flatBuffers(fused)[0].gradients == nil)
        #expect(zip(fusedParameters, views).allSatisfy { $0.grad === $1 }, "external gradients are left alone")
        for step in c.steps.indices {
            reference.setGradients(plainParameters, step: step)
            reference.writeGradients(fusedParameters, step: step)
            plain.step()
            fused.step()
            #expect(segmentCounts(fused) == [2], "reversed gradients are not contiguous in group order")
            fused.zeroGradients()
            #expect(zip(fusedParameters, views).allSatisfy { $0.grad === $1 }, "zeroGradients keeps external views")
            #expect(bucket.toArray().allSatisfy { $0 == 0 })
        }
        expectSameBits(plainParameters, fusedParameters, "\(name)")
        expectSameState(plain.state(), fused.state(), "\(name)")

        // Gradients external but contiguous in group order: merged into one segment.
        let inOrder = reference.makeParameters()
        let ordered = Tensor.zeros([counts.reduce(0, +)])
        offset = 0
        for parameter in inOrder {
            parameter.grad = Tensor(storage: ordered.storage, shape: parameter.shape, offset: offset)
            offset += parameter.count
        }
        let merged = try makeOptimizer(c, [ParameterGroup(inOrder)], fused: true, layout: .external)
        reference.writeGradients(inOrder, step: 0)
        merged.step()
        #expect(segmentCounts(merged) == [1])
    }

    @Test("a parameter with a nil gradient is untouched and gets no state", arguments: fixtureCases)
    func nilGradientIsSkipped(_ name: String) throws {
        let c = reference.testCase(name)
        let plainParameters = reference.makeParameters(), fusedParameters = reference.makeParameters()
        let plain = try makeOptimizer(c, [ParameterGroup(plainParameters)], fused: false)
        let fused = try makeOptimizer(c, [ParameterGroup(fusedParameters)], fused: true)
        let before = bits(fusedParameters)
        for step in 0..<3 {
            reference.writeGradients(fusedParameters, step: step)
            reference.setGradients(plainParameters, step: step)
            fusedParameters[1].grad = nil
            plainParameters[1].grad = nil
            fused.step()
            plain.step()
            #expect(segmentCounts(fused) == [1])
            fused.zeroGradients()
            expectViews(fused, gradients: true, "zeroGradients restores the dropped view")
        }
        #expect(bits(fusedParameters)[1] == before[1], "\(name): p2 changed without a gradient")
        #expect(bits(fusedParameters)[0] != before[0], "\(name): p1 did not change")
        expectSameBits(plainParameters, fusedParameters, "\(name)")
        #expect(fused.state().tensors.keys.allSatisfy { !$0.hasPrefix("p2.") }, "no state for p2")
        expectSameState(plain.state(), fused.state(), "\(name)")

        // The first parameter without a gradient splits the group around it; results still match.
        reference.writeGradients(fusedParameters, step: 3)
        reference.setGradients(plainParameters, step: 3)
        fusedParameters[0].grad = nil
        plainParameters[0].grad = nil
        fused.step()
        plain.step()
        #expect(segmentCounts(fused) == [1])
        expectSameBits(plainParameters, fusedParameters, "\(name)")
        expectSameState(plain.state(), fused.state(), "\(name)")
    }

    @Test("state round trip fused → per-tensor → fused is exact, and training continues bit-identically", arguments: fixtureCases)
    func stateRoundTrip(_ name: String) throws {
        let c = reference.testCase(name)
        let original = reference.makeParameters()
        let fused = try makeOptimizer(c, [ParameterGroup(original)], fused: true)
        for step in 0..<3 {
            reference.writeGradients(original, step: step)
            if step == 0 { original[1].grad = nil }  // p2's state starts one step late
            fused.step()
            fused.zeroGradients()
        }
        let saved = fused.state()
        if c.momentum != 0 || c.optimizer != "sgd" { #expect(!saved.tensors.isEmpty) }

        let values = Dictionary(uniqueKeysWithValues: original.map { ($0.name!, $0.toArray()) })
        let plainParameters = reference.makeParameters(values)
        let plain = try makeOptimizer(c, [ParameterGroup(plainParameters)], fused: false)
        try plain.load(saved)
        let viaPlain = plain.state()
        expectSameState(viaPlain, saved, "via per-tensor")
        #expect(viaPlain.scalars == saved.scalars)

        let restoredParameters = reference.makeParameters(values)
        let restored = try makeOptimizer(c, [ParameterGroup(restoredParameters)], fused: true)
        try restored.load(viaPlain)
        expectSameState(restored.state(), saved, "\(name)")
        #expect(restored.state().scalars == saved.scalars)
        for (key, tensor) in restored.state().tensors { #expect(tensor.shape == saved.tensors[key]!.shape) }

        for step in 3..<5 {
            reference.writeGradients(original, step: step)
            reference.setGradients(plainParameters, step: step)
            reference.writeGradients(restoredParameters, step: step)
            fused.step()
            plain.step()
            restored.step()
        }
        expectSameBits(original, plainParameters, "\(name)")
        expectSameBits(original, restoredParameters, "\(name)")
    }

    @Test("load() of a mismatched state throws .incompatible and leaves the optimizer unchanged", arguments: ["sgd_momentum", "adam_l2", "adamw"])
    func loadValidatesAndIsAtomic(_ name: String) throws {
        let c = reference.testCase(name)
        let parameters = reference.makeParameters(), twinParameters = reference.makeParameters()
        let fused = try makeOptimizer(c, [ParameterGroup(parameters)], fused: true)
        let twin = try makeOptimizer(c, [ParameterGroup(twinParameters)], fused: true)
        for step in 0..<2 {
            reference.writeGradients(parameters, step: step)
            reference.writeGradients(twinParameters, step: step)
            fused.step()
            twin.step()
        }
        let before = fused.state()

        // p1's state is fine, p2's has the wrong shape: nothing may be loaded.
        var bad = before
        let suffixes = c.optimizer == "sgd" ? [".momentum_buffer"] : [".exp_avg", ".exp_avg_sq"]
        for suffix in suffixes {
            bad.tensors["p1" + suffix] = Tensor.zeros([3, 4])
            bad.tensors["p2" + suffix] = Tensor.zeros([6])
        }
        bad.scalars["step"] = 7
        let error = #expect(throws: ConvoyError.self) { try fused.load(bad) }
        guard case .incompatible? = error else {
            Issue.record("expected ConvoyError.incompatible, got \(String(describing: error))")
            return
        }
        expectSameState(fused.state(), before, "\(name)")
        #expect(fused.state().scalars == before.scalars)
        for step in 2..<5 {
            reference.writeGradients(parameters, step: step)
            reference.writeGradients(twinParameters, step: step)
            fused.step()
            twin.step()
        }
        expectSameBits(parameters, twinParameters, "\(name)")
    }

    @Test("a parallel pass over large, scattered segments (3 threads, chunk edges inside segments) is bit-identical", arguments: fixtureCases)
    func parallelSegments(_ name: String) throws {
        let c = reference.testCase(name)
        let shapes = [[97, 211], [5], [40_013], [3, 7]]
        func makeParameters() -> [Parameter] {
            shapes.enumerated().map { index, shape in
                let count = shape.reduce(1, *)
                let values = (0..<count).map { Float(sin(Double($0 * (index + 3)) * 0.37)) }
                let parameter = Tensor(shape: shape, values: values, requiresGrad: true)
                parameter.name = "w\(index)"
                return parameter
            }
        }
        func gradients(step: Int) -> [[Float]] {
            shapes.enumerated().map { index, shape in
                (0..<shape.reduce(1, *)).map { Float(cos(Double($0 + 31 * step + 7 * index) * 0.11)) * (step % 2 == 0 ? 1 : 0.5) }
            }
        }
        let plainParameters = makeParameters(), fusedParameters = makeParameters(), externalParameters = makeParameters()
        // External gradients: parameters 0 and 1 adjacent (merged), 2 before them, 3 apart -> 3 segments.
        let bucket = Tensor.zeros([externalParameters.reduce(0) { $0 + $1.count } + 16])
        let starts = [40_013, 40_013 + 97 * 211, 0, 40_013 + 97 * 211 + 5 + 16]
        for (parameter, start) in zip(externalParameters, starts) {
            parameter.grad = Tensor(storage: bucket.storage, shape: parameter.shape, offset: start)
        }
        let pool = ComputePool(threadCount: 3)
        try ComputePool.withPool(pool) {
            let plain = try makeOptimizer(c, [ParameterGroup(plainParameters)], fused: false)
            let fused = try makeOptimizer(c, [ParameterGroup(fusedParameters)], fused: true)
            let external = try makeOptimizer(c, [ParameterGroup(externalParameters)], fused: true, layout: .external)
            for step in 0..<4 {
                let g = gradients(step: step)
                for (index, values) in g.enumerated() {
                    plainParameters[index].grad = Tensor(shape: shapes[index], values: values)
                    for target in [fusedParameters[index], externalParameters[index]] {
                        values.withUnsafeBufferPointer { target.grad!.contiguousFloats.update(from: $0.baseAddress!, count: values.count) }
                    }
                }
                plain.step()
                fused.step()
                external.step()
                #expect(segmentCounts(fused) == [1])
                #expect(segmentCounts(external) == [3])
                fused.zeroGradients()
                external.zeroGradients()
            }
            expectSameBits(plainParameters, fusedParameters, "\(name) flat")
            expectSameBits(plainParameters, externalParameters, "\(name) external")
            expectSameState(plain.state(), fused.state(), "\(name) flat")
            expectSameState(plain.state(), external.state(), "\(name) external")
        }
    }

    @Test("in place over slices of one shard buffer (ZeRO's layout): nothing moves, bit-identical, adjacent slices merge", arguments: fixtureCases)
    func inPlaceSlices(_ name: String) throws {
        let c = reference.testCase(name)
        // A shard as ZeRO lays it out: slices of matrices (decaying) and vectors (not) interleaved, each
        // parameter a view into one values buffer with its gradient at the same offset of a gradient buffer.
        let counts = [97 * 211, 5, 40_013, 21, 16]
        let decays = [true, false, true, true, false]
        let starts = counts.indices.map { counts[..<$0].reduce(0, +) }
        let total = counts.reduce(0, +)
        let initial = counts.enumerated().map { index, count in (0..<count).map { Float(sin(Double($0 * (index + 3)) * 0.37)) } }
        let shard = Tensor(shape: [total], values: initial.flatMap { $0 })
        let gradientShard = Tensor.zeros([total])
        let inPlace: [Parameter] = counts.indices.map { index in
            let slice = Tensor(storage: shard.storage, shape: [counts[index]], offset: starts[index])
            slice.grad = Tensor(storage: gradientShard.storage, shape: [counts[index]], offset: starts[index])
            slice.name = "s\(index)"
            return slice
        }
        let plainParameters: [Parameter] = counts.indices.map { index in
            let parameter = Tensor(shape: [counts[index]], values: initial[index], requiresGrad: true)
            parameter.name = "s\(index)"
            return parameter
        }
        func groups(_ parameters: [Parameter]) -> [ParameterGroup] {
            [ParameterGroup(parameters.indices.filter { decays[$0] }.map { parameters[$0] }, weightDecay: 0.05),
             ParameterGroup(parameters.indices.filter { !decays[$0] }.map { parameters[$0] }, weightDecay: 0)]
        }
        let pool = ComputePool(threadCount: 3)
        try ComputePool.withPool(pool) {
            let plain = try makeOptimizer(c, groups(plainParameters), fused: false)
            let fused = try makeOptimizer(c, groups(inPlace), fused: true, layout: .external, placement: .inPlace)
            #expect(flatBuffers(fused).allSatisfy { $0.values == nil && $0.placement == .inPlace })
            for step in 0..<4 {
                for index in counts.indices {
                    let values = (0..<counts[index]).map { Float(cos(Double($0 + 31 * step + 7 * index) * 0.11)) }
                    plainParameters[index].grad = Tensor(shape: [counts[index]], values: values)
                    values.withUnsafeBufferPointer { (gradientShard.floatPointer + starts[index]).update(from: $0.baseAddress!, count: counts[index]) }
                }
                plain.step()
                fused.step()
                // Decaying: s0 | s2 s3 (adjacent); not decaying: s1 | s4 (apart).
                #expect(segmentCounts(fused) == [2, 2])
                fused.zeroGradients()
                #expect(gradientShard.toArray().allSatisfy { $0 == 0 }, "zeroGradients fills the external gradient views")
            }
        }
        for (index, parameter) in inPlace.enumerated() {
            #expect(parameter.storage === shard.storage && parameter.offset == starts[index], "s\(index) was moved out of the shard")
        }
        expectSameBits(plainParameters, inPlace, "\(name) in place")
        #expect(shard.toArray().map(\.bitPattern) == plainParameters.flatMap { $0.toArray() }.map(\.bitPattern), "the update landed in the shard buffer itself")
    }

    @Test("in place: a parameter rebound elsewhere is no longer a view; state keys match the per-tensor optimizer")
    func inPlaceViewsAndState() throws {
        let buffer = Tensor(shape: [6], values: [1, 2, 3, 4, 5, 6])
        let a = Tensor(storage: buffer.storage, shape: [2], offset: 0), b = Tensor(storage: buffer.storage, shape: [2, 2], offset: 2)
        a.name = "a"
        b.name = "b"
        let gradients = Tensor(shape: [6], values: [1, 1, 1, 2, 3, 4])
        a.grad = Tensor(storage: gradients.storage, shape: [2], offset: 0)
        b.grad = Tensor(storage: gradients.storage, shape: [2, 2], offset: 2)
        let fused = try FusedAdam([a, b], learningRate: 0.1, gradientLayout: .external, placement: .inPlace)
        let plainA = Tensor(shape: [2], values: [1, 2], requiresGrad: true), plainB = Tensor(shape: [2, 2], values: [3, 4, 5, 6], requiresGrad: true)
        plainA.name = "a"
        plainB.name = "b"
        plainA.grad = a.grad!.copy()
        plainB.grad = b.grad!.copy()
        let plain = Adam([plainA, plainB], learningRate: 0.1)
        fused.step()
        plain.step()
        expectSameBits([plainA, plainB], [a, b], "one step")
        #expect(fused.lastStepSegmentCounts == [1], "a and b (and their gradients) are adjacent: one segment")
        expectSameState(plain.state(), fused.state(), "same keys and moments")
        #expect(fused.flatBuffers[0].parameterIsView(0) && fused.flatBuffers[0].parameterIsView(1))
        a.rebind(to: Tensor(shape: [2], values: [0, 0]))
        #expect(!fused.flatBuffers[0].parameterIsView(0), "rebinding moves a out of the buffer it was found in")
        #expect(buffer.toArray()[2...].map(\.bitPattern) == plainB.toArray().map(\.bitPattern))
    }

    @Test("only groups with equal hyper-parameters are fused together")
    func groupingByHyperParameters() throws {
        let model = try GPT(gptConfiguration, seed: 3)
        let all = model.parameters
        let matrices = all.filter { $0.rank >= 2 }, vectors = all.filter { $0.rank < 2 }
        let half = matrices.count / 2

        // Two groups with the same decay (one explicit, one the optimizer default) fuse; a third does not.
        let sgd = try FusedSGD([ParameterGroup(Array(matrices[..<half]), weightDecay: 0.1),
                            ParameterGroup(vectors, weightDecay: 0),
                            ParameterGroup(Array(matrices[half...]))],
                           learningRate: 0.1, momentum: 0.9, weightDecay: 0.1)
        #expect(sgd.fusedGroupCount == 2)
        #expect(sgd.fusedWeightDecays == [0.1, 0])
        #expect(sgd.flatBuffers[0].parameters.map(ObjectIdentifier.init) == matrices.map(ObjectIdentifier.init))
        #expect(sgd.flatBuffers[1].parameters.map(ObjectIdentifier.init) == vectors.map(ObjectIdentifier.init))
        #expect(sgd.flatBuffers[0].totalCount == matrices.reduce(0) { $0 + $1.count })

        let adam = try FusedAdam.adamW([ParameterGroup(matrices, weightDecay: 0.1), ParameterGroup(vectors, weightDecay: 0.2),
                                    ParameterGroup([], weightDecay: 0.3)], learningRate: 1e-3)
        #expect(adam.fusedGroupCount == 2, "different decays stay apart; empty groups vanish")
        #expect(adam.fusedWeightDecays == [0.1, 0.2])

        let single = try FusedAdam(all, learningRate: 1e-3)
        #expect(single.fusedGroupCount == 1)
    }

    @Test("FlatParameterBuffer packs values, records offsets and installs gradient views")
    func flatParameterBuffer() throws {
        let a = Tensor(shape: [2, 3], values: [1, 2, 3, 4, 5, 6], requiresGrad: true)
        let b = Tensor(shape: [4], values: [7, 8, 9, 10], requiresGrad: true)
        b.grad = Tensor(shape: [4], values: [0.5, 0.25, 0.125, 1])
        let identityA = ObjectIdentifier(a)
        let flat = try FlatParameterBuffer([a, b])
        #expect(flat.offsets == [0, 6])
        #expect(flat.counts == [6, 4])
        #expect(flat.totalCount == 10)
        #expect(flat.values!.shape == [10])
        #expect(flat.values!.toArray() == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
        #expect(ObjectIdentifier(flat.parameters[0]) == identityA)
        #expect(a.storage === flat.values!.storage && b.storage === flat.values!.storage)
        #expect(a.toArray() == [1, 2, 3, 4, 5, 6] && a.shape == [2, 3])
        #expect(flat.gradients?.toArray() == [0, 0, 0, 0, 0, 0, 0.5, 0.25, 0.125, 1], "an existing gradient is copied in")
        #expect(flat.gradientIsView(0) && flat.gradientIsView(1))

        // Writes through the parameter show in the flat buffer and vice versa.
        a.contiguousFloats[1] = 42
        #expect(flat.values!.toArray()[1] == 42)
        flat.values!.floatPointer[9] = -1
        #expect(b.toArray()[3] == -1)

        // Backward accumulates into the views.
        let loss = (a * 2).sum() + (b * b).sum()
        try loss.backward()
        #expect(flat.gradients!.toArray() == [2, 2, 2, 2, 2, 2, 14.5, 16.25, 18.125, -1])

        b.grad = nil
        flat.zeroGradients()
        #expect(flat.gradientIsView(1), "zeroGradients puts a dropped view back")
        #expect(flat.gradients!.toArray().allSatisfy { $0 == 0 })

        // External: gradients are left alone.
        let c = Tensor(shape: [3], values: [1, 2, 3], requiresGrad: true)
        let external = Tensor(shape: [3], values: [4, 5, 6])
        c.grad = external
        let other = try FlatParameterBuffer([c], gradientLayout: .external)
        #expect(other.gradients == nil)
        #expect(c.grad === external)
        #expect(!other.gradientIsView(0))
        other.zeroGradients()
        #expect(c.grad === external && external.toArray() == [0, 0, 0])
        #expect(c.toArray() == [1, 2, 3])
    }
}
