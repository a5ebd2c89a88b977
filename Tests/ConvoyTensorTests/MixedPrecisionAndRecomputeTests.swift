import ConvoyTensor
import Testing

/// bf16 compute precision in the matrix-product ops, the causal blocking of attention, and activation recompute.
@Suite struct MixedPrecisionAndRecomputeTests {
    /// Values rounded to bf16 and kept as fp32.
    static func rounded(_ t: Tensor) -> Tensor {
        Tensor(shape: t.shape, values: t.toArray().map { BFloat16($0).floatValue })
    }

    /// max |a − b| ÷ max |b|.
    static func normwiseError(_ a: [Float], _ b: [Float]) -> Float {
        zip(a, b).map { abs($0 - $1) }.max()! / max(b.map(abs).max()!, 1e-30)
    }

    @Test func roundingToFloatIsRoundingThenWidening() {
        var values = TestData.uniform([1000], seed: 701, low: -1e3, high: 1e3).toArray()
        values += [.nan, -.nan, .infinity, -.infinity, 0, -0, .greatestFiniteMagnitude, .leastNonzeroMagnitude, 1.00390625, 1.01171875]
        var viaRound = [BFloat16](repeating: BFloat16(bitPattern: 0), count: values.count)
        var widened = [Float](repeating: 0, count: values.count), direct = widened
        BFloat16.round(values, to: &viaRound, count: values.count, pool: nil)
        BFloat16.widen(viaRound, to: &widened, count: values.count, pool: nil)
        BFloat16.roundToFloat(values, to: &direct, count: values.count, pool: nil)
        #expect(direct.map(\.bitPattern) == widened.map(\.bitPattern))
    }

    /// At bf16 precision, matmul and linear compute with bf16-rounded operands (forward and backward) and fp32
    /// accumulation: they agree with fp32 ops on rounded operands to fp32 accuracy, and differ from fp32 ops on
    /// the original operands by about bf16's rounding.
    @Test func matmulAndLinearAtBF16RoundTheirOperands() throws {
        let x = TestData.uniform([3, 5, 48], seed: 702)
        let w = TestData.uniform([48, 40], seed: 703)
        let bias = TestData.uniform([40], seed: 704)
        let g = TestData.uniform([3, 5, 40], seed: 705)
        for op in ["matmul", "linear"] {
            func run(_ xv: Tensor, _ wv: Tensor, _ gradient: Tensor, _ precision: DType) throws -> [[Float]] {
                let xp = Tensor(shape: xv.shape, values: xv.toArray(), requiresGrad: true)
                let wp = Tensor(shape: wv.shape, values: wv.toArray(), requiresGrad: true)
                let y = ComputePrecision.with(precision) { op == "matmul" ? xp.matmul(wp) : Tensor.linear(xp, weight: wp, bias: bias) }
                try ComputePrecision.with(.float32) { try y.backward(outputGradient: gradient) }
                return [y.toArray(), xp.grad!.toArray(), wp.grad!.toArray()]
            }
            let bf16 = try run(x, w, g, .bfloat16)
            let fp32 = try run(x, w, g, .float32)
            // Forward: x and W rounded; backward: the incoming gradient is rounded too.
            let roundedForward = try run(Self.rounded(x), Self.rounded(w), Self.rounded(g), .float32)
            for (index, name) in ["output", "dx", "dW"].enumerated() {
                #expect(Self.normwiseError(bf16[index], roundedForward[index]) <= 2e-6, "\(op) \(name) vs fp32 on rounded operands")
                let error = Self.normwiseError(bf16[index], fp32[index])
                #expect(error > 0 && error <= 1e-2, "\(op) \(name): bf16 differs from fp32 by \(error)")
            }
        }
    }

    /// The causal blocking changes which products are computed, not the result: several block sizes agree
    /// with one block, and the gradient matches finite differences with several blocks.
    @Test(arguments: [1, 2, 3, 4, 64])
    func attentionBlockingGivesTheSameResult(rowBlock: Int) throws {
        let qkv = TestData.uniform([2, 7, 24], seed: 706, low: -2, high: 2)
        let key = DropoutKey(seed: 3, step: 2, layer: 1, site: 2, firstSequence: 4)
        let one = Tensor.causalSelfAttention(qkv: qkv, heads: 2, dropout: 0.3, key: key, rowBlock: 64).toArray()
        let blocked = Tensor.causalSelfAttention(qkv: qkv, heads: 2, dropout: 0.3, key: key, rowBlock: rowBlock).toArray()
        #expect(Self.normwiseError(blocked, one) <= 1e-6)
        expectGradientsMatch([TestData.uniform([2, 5, 24], seed: 707)]) { Tensor.causalSelfAttention(qkv: $0[0], heads: 2, dropout: 0.2, key: key, rowBlock: rowBlock) }
    }

    /// At bf16, attention equals fp32 attention on bf16-rounded Q, K, V when the probabilities are exactly
    /// representable (one key per query: the first token), and stays within bf16 rounding of fp32 elsewhere,
    /// forward and backward.
    @Test func attentionAtBF16RoundsItsOperands() throws {
        let qkv = TestData.uniform([2, 9, 48], seed: 712, low: -2, high: 2)
        let bf16 = ComputePrecision.with(.bfloat16) { Tensor.causalSelfAttention(qkv: qkv, heads: 4, rowBlock: 4) }.toArray()
        let onRounded = Tensor.causalSelfAttention(qkv: Self.rounded(qkv), heads: 4).toArray()
        let fp32 = Tensor.causalSelfAttention(qkv: qkv, heads: 4).toArray()
        // Token 0 of each sequence: probability 1, output = its (rounded) V.
        for b in 0..<2 { #expect(Array(bf16[(b * 9 * 16)..<(b * 9 * 16 + 16)]) == Array(onRounded[(b * 9 * 16)..<(b * 9 * 16 + 16)])) }
        let error = Self.normwiseError(bf16, fp32)
        #expect(error > 0 && error <= 1e-2, "bf16 attention vs fp32: \(error)")
        func gradient(_ precision: DType) throws -> [Float] {
            let input = Tensor(shape: qkv.shape, values: qkv.toArray(), requiresGrad: true)
            let y = ComputePrecision.with(precision) { Tensor.causalSelfAttention(qkv: input, heads: 4, rowBlock: 4) }
            try y.backward(outputGradient: TestData.uniform([2, 9, 16], seed: 713))
            return input.grad!.toArray()
        }
        let gradientError = Self.normwiseError(try gradient(.bfloat16), try gradient(.float32))
        #expect(gradientError > 0 && gradientError <= 2e-2, "bf16 attention gradient vs fp32: \(gradientError)")
    }

    /// Selective recompute (the attention core recomputed in backward) gives bit-identical gradients, dropout on.
    @Test(arguments: [DType.float32, .bfloat16])
    func attentionRecomputeIsBitIdentical(precision: DType) throws {
        let key = DropoutKey(seed: 5, step: 7, layer: 2, site: 2, firstSequence: 0)
        func gradient(recompute: Bool) throws -> [UInt32] {
            let qkv = TestData.uniform([2, 9, 48], seed: 708)
            qkv.requiresGrad = true
            let y = ComputePrecision.with(precision) { Tensor.causalSelfAttention(qkv: qkv, heads: 4, dropout: 0.25, key: key, recompute: recompute, rowBlock: 4) }
            try (y * TestData.uniform([2, 9, 16], seed: 709)).sum().backward()
            return qkv.grad!.toArray().map(\.bitPattern)
        }
        #expect(try gradient(recompute: true) == gradient(recompute: false))
    }

    /// A recomputed segment gives bit-identical gradients for its input and the parameters it reads, and
    /// keeps none of its intermediate tensors on the tape.
    @Test func recomputingASegmentIsBitIdentical() throws {
        func run(recompute: Bool) throws -> [[UInt32]] {
            let x = TestData.uniform([4, 6, 16], seed: 710)
            x.requiresGrad = true
            let w = TestData.uniform([16, 16], seed: 711)
            w.requiresGrad = true
            let key = DropoutKey(seed: 1, step: 3, layer: 1, site: 4, firstSequence: 0)
            let segment: (Tensor) -> Tensor = { input in
                let h = Tensor.linear(input, weight: w, bias: nil).gelu()
                return input + Tensor.dropout(h.matmul(w), probability: 0.2, key: key)
            }
            let y = recompute ? Tensor.recomputing(x, parameters: [w], segment) : segment(x)
            try (y * y).sum().backward()
            return [x.grad!.toArray().map(\.bitPattern), w.grad!.toArray().map(\.bitPattern), y.toArray().map(\.bitPattern)]
        }
        #expect(try run(recompute: true) == run(recompute: false))
    }
}
