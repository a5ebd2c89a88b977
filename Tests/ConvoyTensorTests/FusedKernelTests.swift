import ConvoyTensor
import Foundation
import Testing

/// The fused kernels around the GEMMs: bias + GELU and residual add + layer norm. Each is checked against
/// central finite differences in Double and against the unfused composition it replaces, which it must match
/// bit for bit (outputs and every input's gradient), on one thread and on two (the kernels split rows, or
/// columns, over the pool).
@Suite struct FusedKernelTests {
    // MARK: Bias + GELU

    @Test func biasGELUGradient() throws {
        expectGradientsMatch([TestData.uniform([3, 5, 11], seed: 301, low: -3, high: 3), TestData.uniform([11], seed: 302)], "[3, 5, 11]: SIMD body and tail") {
            Tensor.biasGELU($0[0], bias: $0[1])
        }
        expectGradientsMatch([TestData.uniform([4, 16], seed: 303, low: -3, high: 3), TestData.uniform([16], seed: 304)], "[4, 16]") {
            Tensor.biasGELU($0[0], bias: $0[1])
        }
    }

    @Test(arguments: [[37, 600], [2, 3, 13], [5, 8]])
    func biasGELUIsBitIdenticalToTheComposition(shape: [Int]) throws {
        for pool in [TestPools.one, TestPools.two] {
            try ComputePool.withPool(pool) {
                let n = shape.last!
                let upstream = TestData.uniform(shape, seed: 305)
                let fused = try Self.run(inputs: [TestData.uniform(shape, seed: 306, low: -4, high: 4), TestData.uniform([n], seed: 307)], upstream: upstream) {
                    [Tensor.biasGELU($0[0], bias: $0[1])]
                }
                let composed = try Self.run(inputs: [TestData.uniform(shape, seed: 306, low: -4, high: 4), TestData.uniform([n], seed: 307)], upstream: upstream) {
                    [($0[0] + $0[1]).gelu()]
                }
                #expect(fused.outputs == composed.outputs, "outputs of \(shape) on \(pool.threadCount) threads")
                #expect(fused.gradients == composed.gradients, "x and bias gradients of \(shape) on \(pool.threadCount) threads")
            }
        }
    }

    // MARK: Residual add + layer norm

    @Test func residualLayerNormGradient() throws {
        let inputs = { (n: Int, seed: UInt64) in
            [TestData.uniform([3, 4, n], seed: seed, low: -2, high: 2), TestData.uniform([3, 4, n], seed: seed + 1, low: -2, high: 2),
             TestData.uniform([n], seed: seed + 2, low: 0.5, high: 1.5), TestData.uniform([n], seed: seed + 3)]
        }
        for (n, seed) in [(6, UInt64(310)), (19, 320)] {
            expectGradientsMatch(inputs(n, seed), "normalised output, width \(n)") {
                Tensor.residualLayerNorm($0[0], $0[1], weight: $0[2], bias: $0[3]).normalized
            }
            // Both outputs carry gradient, as in a block where the sum also feeds the next residual add.
            expectGradientsMatch(inputs(n, seed), "sum and normalised output, width \(n)") {
                let (sum, normalized) = Tensor.residualLayerNorm($0[0], $0[1], weight: $0[2], bias: $0[3])
                return sum * 0.5 + normalized
            }
        }
    }

    @Test(arguments: [[2, 64, 384], [3, 5, 13]])
    func residualLayerNormIsBitIdenticalToTheComposition(shape: [Int]) throws {
        for pool in [TestPools.one, TestPools.two] {
            try ComputePool.withPool(pool) {
                let n = shape.last!
                let inputs = {
                    [TestData.uniform(shape, seed: 330, low: -2, high: 2), TestData.uniform(shape, seed: 331, low: -2, high: 2),
                     TestData.uniform([n], seed: 332, low: 0.5, high: 1.5), TestData.uniform([n], seed: 333)]
                }
                let upstream = TestData.uniform(shape, seed: 334)
                let fused = try Self.run(inputs: inputs(), upstream: upstream) {
                    let (sum, normalized) = Tensor.residualLayerNorm($0[0], $0[1], weight: $0[2], bias: $0[3])
                    return [sum, normalized]
                }
                let composed = try Self.run(inputs: inputs(), upstream: upstream) {
                    let sum = $0[0] + $0[1]
                    return [sum, Tensor.layerNorm(sum, weight: $0[2], bias: $0[3])]
                }
                #expect(fused.outputs == composed.outputs, "sum and normalised output of \(shape) on \(pool.threadCount) threads")
                #expect(fused.gradients == composed.gradients, "residual, delta, weight and bias gradients of \(shape) on \(pool.threadCount) threads")
            }
        }
    }

    // MARK: exp's floor

    @Test func vectorFloorMatchesRoundedDown() {
        // Integers, halves (round-to-nearest ties), values just either side of integers, and exp's clamped range.
        var values: [Float] = (-520...520).map { Float($0) / 4 }
        for k in -130...130 {
            values += [Float(k).nextDown, Float(k).nextUp, Float(k) + 0.5, Float(k) - 0.5, (Float(k) + 0.5).nextDown, (Float(k) + 0.5).nextUp]
        }
        values += TestData.uniform([4096], seed: 340, low: -127, high: 129).toArray() + [-0.0, 0.0, 1e-30, -1e-30, 126.9, -126.9]
        while values.count % 8 != 0 { values.append(0.25) }
        for start in stride(from: 0, to: values.count, by: 8) {
            let lanes = VectorMath.Vector(values[start..<(start + 8)])
            let floored = VectorMath.floor(lanes)
            for lane in 0..<8 {
                #expect(floored[lane] == lanes[lane].rounded(.down), "floor(\(lanes[lane]))")
            }
        }
    }

    /// Forward outputs (flattened, in order) and input gradients after a backward with `upstream` into every output.
    private static func run(inputs: [Tensor], upstream: Tensor, _ function: ([Tensor]) -> [Tensor]) throws -> (outputs: [[Float]], gradients: [[Float]]) {
        for input in inputs { input.requiresGrad = true }
        let outputs = function(inputs)
        var loss = (outputs[0] * upstream).sum()
        for (index, output) in outputs.enumerated().dropFirst() { loss = loss + (output * upstream).sum() * Float(index + 1) }
        try loss.backward()
        return (outputs.map { $0.toArray() }, inputs.map { $0.grad?.toArray() ?? [] })
    }
}
