import ConvoyTensor
import Testing

/// The gradient checker must reject the mistakes it exists to catch; otherwise every passing gradient test
/// below would prove nothing.
@Suite struct GradientCheckSelfTests {
    /// y = 3x, recorded with a backward that multiplies by `gradientFactor` (3 is correct).
    static func tripled(_ x: Tensor, gradientFactor: Float) -> Tensor {
        let y = withNoGrad { x * 3 }
        return Tensor.record(y, operation: "tripled", inputs: [x]) { gradient in [gradient * gradientFactor] }
    }

    /// y = x·A for a fixed square A; a correct backward returns g·Aᵀ, the wrong one g·A.
    static func timesMatrix(_ x: Tensor, _ a: Tensor, transposeInBackward: Bool) -> Tensor {
        let y = withNoGrad { x.matmul(a) }
        return Tensor.record(y, operation: "timesMatrix", inputs: [x]) { gradient in
            [gradient.matmul(transposeInBackward ? a.transposed() : a)]
        }
    }

    @Test func acceptsACorrectGradient() throws {
        let report = try GradientCheck.compare([TestData.uniform([3, 4], seed: 1)]) { Self.tripled($0[0], gradientFactor: 3) }
        #expect(report.passed, "\(report)")
        #expect(report.largestNumericMagnitude > 0.5)
    }

    @Test func rejectsADroppedFactorOfTwo() throws {
        let report = try GradientCheck.compare([TestData.uniform([3, 4], seed: 1)]) { Self.tripled($0[0], gradientFactor: 1.5) }
        #expect(!report.passed)
        #expect(report.violations == 12)
    }

    @Test func rejectsATransposedGradient() throws {
        let a = TestData.uniform([4, 4], seed: 2)
        let correct = try GradientCheck.compare([TestData.uniform([3, 4], seed: 3)]) { Self.timesMatrix($0[0], a, transposeInBackward: true) }
        #expect(correct.passed, "\(correct)")
        let wrong = try GradientCheck.compare([TestData.uniform([3, 4], seed: 3)]) { Self.timesMatrix($0[0], a, transposeInBackward: false) }
        #expect(!wrong.passed)
    }

    @Test func rejectsAGradientThatIgnoresTheOutputWeights() throws {
        // The gradient of a plain sum: right for L = Σy, wrong for the weighted L the checker uses.
        let report = try GradientCheck.compare([TestData.uniform([2, 5], seed: 4)]) { inputs in
            let x = inputs[0]
            let y = withNoGrad { x * 1 }
            return Tensor.record(y, operation: "identity", inputs: [x]) { gradient in [Tensor.ones(gradient.shape)] }
        }
        #expect(!report.passed)
    }

    @Test func reportsAnInputThatGetsNoGradient() throws {
        let report = try GradientCheck.compare([TestData.uniform([2], seed: 5), TestData.uniform([2], seed: 6)]) { inputs in
            let y = withNoGrad { inputs[0] + inputs[1] }
            return Tensor.record(y, operation: "firstOnly", inputs: [inputs[0]]) { [$0] }
        }
        #expect(!report.passed)
        #expect(report.inputsWithoutGradient == [1])
    }

    @Test func poisoningExposesABackwardThatReadsFreedMemory() throws {
        // A deliberately broken op: its backward reads a forward temporary through a raw pointer without
        // keeping the tensor alive. The checker's quarantine keeps the block poisoned and out of other tests'
        // reach until the backward has read it.
        func leaky(_ x: Tensor) -> Tensor {
            let doubled = withNoGrad { x * 2 }
            let saved = doubled.floatPointer
            let y = withNoGrad { x.squared() }
            return Tensor.record(y, operation: "leaky", inputs: [x]) { gradient in
                let g = gradient.toArray()
                return [Tensor(shape: gradient.shape, values: (0..<g.count).map { g[$0] * saved[$0] })]
            }
        }
        let report = try GradientCheck.compare([TestData.uniform([1000], seed: 7)], { leaky($0[0]) })
        #expect(!report.passed)
        #expect(report.worstRatio == .infinity, "the freed temporary should read back as the NaN poison")
    }
}
