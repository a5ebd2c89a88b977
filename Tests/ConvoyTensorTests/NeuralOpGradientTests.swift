import ConvoyTensor
import Foundation
import Testing

/// softmax, logSoftmax, layerNorm, embedding, crossEntropy, dropout and causal self-attention.
@Suite struct NeuralOpGradientTests {
    // MARK: Softmax

    @Test func softmaxGradient() throws {
        expectGradientsMatch([TestData.uniform([3, 5], seed: 201, low: -2, high: 2)], "[3, 5]") { $0[0].softmax() }
        expectGradientsMatch([TestData.uniform([2, 3, 11], seed: 202, low: -2, high: 2)], "[2, 3, 11]: SIMD body and tail") { $0[0].softmax() }
        expectGradientsMatch([TestData.uniform([5, 3], seed: 203, low: -2, high: 2)], "of a transposed view") { $0[0].transposed().softmax() }
    }

    @Test func logSoftmaxGradient() throws {
        expectGradientsMatch([TestData.uniform([3, 5], seed: 204, low: -2, high: 2)], "[3, 5]") { $0[0].logSoftmax() }
        expectGradientsMatch([TestData.uniform([2, 3, 11], seed: 205, low: -2, high: 2)], "[2, 3, 11]") { $0[0].logSoftmax() }
        expectGradientsMatch([TestData.uniform([5, 3], seed: 206, low: -2, high: 2)], "of a transposed view") { $0[0].transposed().logSoftmax() }
    }

    @Test func softmaxForwardMatchesReferenceAndRowsSumToOne() throws {
        let x = TestData.uniform([4, 19], seed: 207, low: -5, high: 5)
        let y = x.softmax().toArray(), logY = x.logSoftmax().toArray()
        let rows = x.doubles
        for r in 0..<4 {
            let row = Array(rows[(r * 19)..<((r + 1) * 19)])
            let expected = Reference.softmax(row)
            expectClose(Array(y[(r * 19)..<((r + 1) * 19)]), expected, absolute: 1e-7, relative: 1e-5)
            expectClose(Array(logY[(r * 19)..<((r + 1) * 19)]), expected.map { Foundation.log($0) }, absolute: 1e-5, relative: 1e-5)
            let total = y[(r * 19)..<((r + 1) * 19)].reduce(0.0) { $0 + Double($1) }
            #expect(abs(total - 1) < 1e-5)
        }
    }

    @Test func softmaxIsStableForLargeMagnitudeLogits() throws {
        let values: [Float] = [1e4, -1e4, 0, 1e4 - 1, 3e4, 3e4, -3e4, 2.9999e4]
        let x = Tensor(shape: [2, 4], values: values)
        let y = x.softmax().toArray(), logY = x.logSoftmax().toArray()
        #expect(y.allSatisfy(\.isFinite) && logY.allSatisfy(\.isFinite))
        // Row 0: max 1e4, the runner-up 1 below it. Row 1: two maxima at 3e4 and one 1 below.
        let e = Foundation.exp(-1.0), l1 = Foundation.log(1 + e), l2 = Foundation.log(2 + e)
        expectClose(y, [1 / (1 + e), 0, 0, e / (1 + e), 1 / (2 + e), 1 / (2 + e), 0, e / (2 + e)], absolute: 1e-6, relative: 1e-5)
        // log-softmax subtracts a rounded log-normaliser near 3e4, whose Float32 spacing is ≈ 2e-3: allow two
        // spacings. Overflow or cancellation would be off by far more (or not finite).
        expectClose(logY, [-l1, -2e4 - l1, -1e4 - l1, -1 - l1, -l2, -l2, -6e4 - l2, -1 - l2], absolute: 4e-3, relative: 1e-6)
        // Shifting a row by a constant changes nothing.
        let shifted = (TestData.uniform([3, 9], seed: 208) + 1000).softmax().toArray()
        expectClose(shifted, TestData.uniform([3, 9], seed: 208).softmax().doubles, absolute: 2e-4, relative: 1e-3)
    }

    // MARK: Layer norm

    static func referenceLayerNorm(_ x: Tensor, _ weight: Tensor, _ bias: Tensor, epsilon: Double = 1e-5) -> [Double] {
        let n = x.shape.last!
        let xv = x.doubles, w = weight.doubles, b = bias.doubles
        var y: [Double] = []
        for r in 0..<(x.count / n) {
            let row = xv[(r * n)..<((r + 1) * n)]
            let mean = row.reduce(0, +) / Double(n)
            let variance = row.reduce(0) { $0 + ($1 - mean) * ($1 - mean) } / Double(n)
            y += row.enumerated().map { ($0.element - mean) / (variance + epsilon).squareRoot() * w[$0.offset] + b[$0.offset] }
        }
        return y
    }

    @Test func layerNormForwardMatchesReference() throws {
        let x = TestData.uniform([5, 13], seed: 211, low: -3, high: 3)
        let w = TestData.uniform([13], seed: 212, low: 0.5, high: 1.5), b = TestData.uniform([13], seed: 213)
        expectClose(Tensor.layerNorm(x, weight: w, bias: b).toArray(), Self.referenceLayerNorm(x, w, b), absolute: 1e-5, relative: 1e-5)
        // A large epsilon is visible in the result.
        expectClose(Tensor.layerNorm(x, weight: w, bias: b, epsilon: 0.5).toArray(), Self.referenceLayerNorm(x, w, b, epsilon: 0.5), absolute: 1e-5, relative: 1e-5)
        // Constant rows normalise to the bias (no NaN from a zero variance).
        let constant = Tensor.full([2, 13], value: 7)
        expectClose(Tensor.layerNorm(constant, weight: w, bias: b).toArray(), b.doubles + b.doubles, absolute: 1e-5, relative: 0)
    }

    @Test func layerNormGradient() throws {
        expectGradientsMatch([TestData.uniform([4, 6], seed: 214, low: -2, high: 2), TestData.uniform([6], seed: 215, low: 0.5, high: 1.5), TestData.uniform([6], seed: 216)], "[4, 6]") {
            Tensor.layerNorm($0[0], weight: $0[1], bias: $0[2])
        }
        expectGradientsMatch([TestData.uniform([2, 3, 8], seed: 217, low: -2, high: 2), TestData.uniform([8], seed: 218, low: 0.5, high: 1.5), TestData.uniform([8], seed: 219)], "[2, 3, 8]") {
            Tensor.layerNorm($0[0], weight: $0[1], bias: $0[2])
        }
    }

    // Regression test: layerNorm's backward once read the row statistics and the contiguous copy of a
    // non-contiguous input through raw pointers without keeping those tensors alive (use-after-free). The
    // checker's allocator poisoning turns such a read into NaN gradients.
    @Test func layerNormGradientOfANonContiguousInput() throws {
        expectGradientsMatch([TestData.uniform([8, 3], seed: 220, low: -2, high: 2), TestData.uniform([8], seed: 221, low: 0.5, high: 1.5), TestData.uniform([8], seed: 222)]) {
            Tensor.layerNorm($0[0].transposed(), weight: $0[1], bias: $0[2])
        }
    }

    // MARK: Embedding

    @Test func embeddingForwardAndGradientWithRepeatedIndices() throws {
        let table = TestData.uniform([5, 3], seed: 231)
        let indices: [Int32] = [1, 3, 1, 0, 3, 3]
        let rows = Tensor.embedding(table, indices: indices, shape: [2, 3])
        #expect(rows.shape == [2, 3, 3])
        let t = table.toArray()
        #expect(rows.toArray() == indices.flatMap { t[(Int($0) * 3)..<(Int($0) * 3 + 3)] })

        expectGradientsMatch([TestData.uniform([5, 3], seed: 231)]) { Tensor.embedding($0[0], indices: indices, shape: [2, 3]) }

        // Repeated rows accumulate; unused rows get exact zeros.
        let weight = TestData.uniform([5, 3], seed: 232)
        weight.requiresGrad = true
        let upstream = TestData.uniform([2, 3, 3], seed: 233)
        try Tensor.embedding(weight, indices: indices, shape: [2, 3]).backward(outputGradient: upstream)
        let g = upstream.doubles
        var expected = [Double](repeating: 0, count: 15)
        for (i, index) in indices.enumerated() { for c in 0..<3 { expected[Int(index) * 3 + c] += g[i * 3 + c] } }
        expectClose(weight.grad?.toArray() ?? [], expected, absolute: 1e-6, relative: 1e-6)
        #expect(weight.grad?.toArray()[6..<9].allSatisfy { $0 == 0 } == true)
    }

    @Test func embeddingGradientOverManyColumnsAndThreads() throws {
        let pool = TestPools.three
        try ComputePool.withPool(pool) {
            let indices: [Int32] = (0..<40).map { Int32(($0 * 7) % 6) }
            let weight = TestData.uniform([6, 70], seed: 234)
            weight.requiresGrad = true
            let upstream = TestData.uniform([40, 70], seed: 235)
            try Tensor.embedding(weight, indices: indices, shape: [40]).backward(outputGradient: upstream)
            let g = upstream.doubles
            var expected = [Double](repeating: 0, count: 6 * 70)
            for (i, index) in indices.enumerated() { for c in 0..<70 { expected[Int(index) * 70 + c] += g[i * 70 + c] } }
            expectClose(weight.grad?.toArray() ?? [], expected, absolute: 1e-5, relative: 1e-5)
        }
    }

    // MARK: Cross-entropy

    static func referenceCrossEntropy(_ logits: Tensor, _ targets: [Int32]) -> Double {
        let classes = logits.shape.last!
        let x = logits.doubles
        var total = 0.0, valid = 0
        for (r, target) in targets.enumerated() where target != Tensor.ignoredTarget {
            let row = Array(x[(r * classes)..<((r + 1) * classes)])
            let maximum = row.max()!
            let lse = maximum + Foundation.log(row.reduce(0) { $0 + Foundation.exp($1 - maximum) })
            total += lse - row[Int(target)]
            valid += 1
        }
        return valid == 0 ? 0 : total / Double(valid)
    }

    @Test func crossEntropyForwardMatchesReference() throws {
        let logits = TestData.uniform([4, 11], seed: 241, low: -3, high: 3)
        let targets: [Int32] = [2, Tensor.ignoredTarget, 0, 10]
        let loss = Tensor.crossEntropy(logits: logits, targets: targets)
        #expect(loss.shape == [])
        expectClose([loss.scalarValue], [Self.referenceCrossEntropy(logits, targets)], absolute: 1e-6, relative: 1e-6)
        // The ignored row is excluded from the mean, not counted as zero loss.
        let withoutIgnored = Tensor.crossEntropy(logits: Tensor.concatenate([logits.slice(axis: 0, 0..<1), logits.slice(axis: 0, 2..<4)], axis: 0), targets: [2, 0, 10])
        #expect(abs(withoutIgnored.scalarValue - loss.scalarValue) < 1e-6)
        // 3-D logits: one target per row of the last axis.
        let logits3 = TestData.uniform([2, 3, 5], seed: 242, low: -3, high: 3)
        let targets3: [Int32] = [0, 1, 2, 3, 4, 0]
        expectClose([Tensor.crossEntropy(logits: logits3, targets: targets3).scalarValue], [Self.referenceCrossEntropy(logits3, targets3)], absolute: 1e-6, relative: 1e-6)
    }

    @Test func crossEntropyIsStableForLargeMagnitudeLogits() throws {
        let base = TestData.uniform([3, 7], seed: 243, low: -3, high: 3)
        let large = base * 1000
        let targets: [Int32] = [1, 5, 6]
        let loss = Tensor.crossEntropy(logits: large, targets: targets).scalarValue
        #expect(loss.isFinite)
        expectClose([loss], [Self.referenceCrossEntropy(large, targets)], absolute: 1e-2, relative: 1e-5)
        let shifted = Tensor.crossEntropy(logits: base + 5e4, targets: targets).scalarValue
        expectClose([shifted], [Self.referenceCrossEntropy(base, targets)], absolute: 2e-2, relative: 0)
    }

    @Test func crossEntropyWithEveryTargetIgnoredIsZeroWithZeroGradient() throws {
        let logits = TestData.uniform([2, 4], seed: 244)
        logits.requiresGrad = true
        let loss = Tensor.crossEntropy(logits: logits, targets: [Tensor.ignoredTarget, Tensor.ignoredTarget])
        #expect(loss.scalarValue == 0)
        try loss.backward()
        #expect(logits.grad?.toArray() == [Float](repeating: 0, count: 8))
    }

    @Test func crossEntropyGradientWithAnIgnoredTarget() throws {
        expectGradientsMatch([TestData.uniform([4, 5], seed: 245, low: -2, high: 2)], "2-D") {
            Tensor.crossEntropy(logits: $0[0], targets: [2, Tensor.ignoredTarget, 0, 4])
        }
        expectGradientsMatch([TestData.uniform([2, 3, 9], seed: 246, low: -2, high: 2)], "3-D, SIMD body and tail") {
            Tensor.crossEntropy(logits: $0[0], targets: [8, 0, Tensor.ignoredTarget, 3, 3, 1])
        }
        // Analytic form: (softmax − onehot) / valid rows, zero on the ignored row.
        let logits = TestData.uniform([3, 4], seed: 247)
        logits.requiresGrad = true
        try Tensor.crossEntropy(logits: logits, targets: [1, Tensor.ignoredTarget, 3]).backward()
        var expected = [Double](repeating: 0, count: 12)
        let x = logits.doubles
        for (r, target) in [(0, 1), (2, 3)] {
            let p = Reference.softmax(Array(x[(r * 4)..<((r + 1) * 4)]))
            for c in 0..<4 { expected[r * 4 + c] = (p[c] - (c == target ? 1 : 0)) / 2 }
        }
        expectClose(logits.grad?.toArray() ?? [], expected, absolute: 1e-6, relative: 1e-5)
    }

    // Regression test: for non-contiguous logits the backward once read the forward's temporary contiguous
    // copy after it had been freed.
    @Test func crossEntropyGradientOfNonContiguousLogits() throws {
        expectGradientsMatch([TestData.uniform([5, 4], seed: 248, low: -2, high: 2)]) {
            Tensor.crossEntropy(logits: $0[0].transposed(), targets: [2, Tensor.ignoredTarget, 0, 4])
        }
    }

    // MARK: Dropout

    static let dropoutKey = DropoutKey(seed: 42, step: 3, layer: 1, site: 2, firstSequence: 0)

    @Test func dropoutGradientIsTheMaskOverOneMinusP() throws {
        let p: Float = 0.3
        let x = TestData.awayFromZero([8, 500], seed: 251)
        x.requiresGrad = true
        let y = Tensor.dropout(x, probability: p, key: Self.dropoutKey)
        let upstream = TestData.uniform([8, 500], seed: 252)
        try y.backward(outputGradient: upstream)
        let xv = x.toArray(), yv = y.toArray(), g = upstream.toArray(), dx = x.grad?.toArray() ?? []
        #expect(dx.count == xv.count)
        var dropped = 0
        for i in 0..<min(dx.count, xv.count) {
            let kept = yv[i] != 0
            if !kept { dropped += 1 }
            // Forward: x/(1−p) or 0. Backward: the same mask and scale applied to the upstream gradient.
            let scale = kept ? 1 / (1 - p) : 0
            #expect(abs(yv[i] - xv[i] * scale) <= 1e-6 * abs(yv[i]), "forward element \(i)")
            #expect(abs(dx[i] - g[i] * scale) <= 1e-6 * abs(g[i] * scale) + 1e-12, "gradient element \(i)")
        }
        // 4000 Bernoulli(0.3) draws: standard deviation of the fraction ≈ 0.0072; allow ±0.04 (> 5σ).
        #expect(abs(Double(dropped) / 4000 - 0.3) < 0.04, "dropped \(dropped) of 4000")
    }

    @Test func dropoutGradientMatchesFiniteDifferences() throws {
        expectGradientsMatch([TestData.uniform([3, 10], seed: 253)]) { Tensor.dropout($0[0], probability: 0.3, key: Self.dropoutKey) }
    }

    @Test func dropoutMasksDependOnTheKey() throws {
        let x = Tensor.ones([4, 64])
        let a = Tensor.dropout(x, probability: 0.5, key: Self.dropoutKey).toArray()
        #expect(a == Tensor.dropout(x, probability: 0.5, key: Self.dropoutKey).toArray())
        for change in [\DropoutKey.seed, \.step, \.layer, \.site] {
            var key = Self.dropoutKey
            key[keyPath: change] += 1
            #expect(Tensor.dropout(x, probability: 0.5, key: key).toArray() != a, "changing \(change) must change the mask")
        }
        #expect(Tensor.dropout(x, probability: 0, key: Self.dropoutKey) === x)
    }

    // MARK: Causal self-attention

    /// Naive per-head attention in Double: out[b, t, h·d + i] = Σ_{j ≤ t} softmax_j(q_t·k_j / √d) v_j[i].
    static func referenceAttention(_ qkv: Tensor, heads: Int) -> [Double] {
        let batch = qkv.shape[0], time = qkv.shape[1], width = qkv.shape[2] / 3
        let headSize = width / heads
        let x = qkv.doubles
        func value(_ b: Int, _ t: Int, _ column: Int) -> Double { x[(b * time + t) * 3 * width + column] }
        var out = [Double](repeating: 0, count: batch * time * width)
        for b in 0..<batch {
            for h in 0..<heads {
                for t in 0..<time {
                    var scores: [Double] = []
                    for j in 0...t {
                        var dot = 0.0
                        for i in 0..<headSize { dot += value(b, t, h * headSize + i) * value(b, j, width + h * headSize + i) }
                        scores.append(dot / Double(headSize).squareRoot())
                    }
                    let weights = Reference.softmax(scores)
                    for i in 0..<headSize {
                        var total = 0.0
                        for j in 0...t { total += weights[j] * value(b, j, 2 * width + h * headSize + i) }
                        out[(b * time + t) * width + h * headSize + i] = total
                    }
                }
            }
        }
        return out
    }

    @Test func attentionForwardMatchesNaivePerHeadImplementation() throws {
        let qkv = TestData.uniform([2, 5, 24], seed: 261, low: -2, high: 2)
        let y = Tensor.causalSelfAttention(qkv: qkv, heads: 2)
        #expect(y.shape == [2, 5, 8])
        expectClose(y.toArray(), Self.referenceAttention(qkv, heads: 2), absolute: 1e-5, relative: 1e-5)
        // More heads and a longer sequence than the SIMD width.
        let longer = TestData.uniform([1, 19, 48], seed: 262, low: -2, high: 2)
        expectClose(Tensor.causalSelfAttention(qkv: longer, heads: 4).toArray(), Self.referenceAttention(longer, heads: 4), absolute: 1e-5, relative: 1e-5)
    }

    @Test func attentionIsCausal() throws {
        let qkv = TestData.uniform([2, 6, 24], seed: 263, low: -2, high: 2)
        let before = Tensor.causalSelfAttention(qkv: qkv, heads: 2).toArray()
        // Change everything about token 3 of sequence 1 (its q, k and v).
        let changed = Tensor(shape: qkv.shape, values: qkv.toArray())
        for c in 0..<24 { changed.floatPointer[(6 + 3) * 24 + c] += 0.75 }
        let after = Tensor.causalSelfAttention(qkv: changed, heads: 2).toArray()
        for b in 0..<2 {
            for t in 0..<6 {
                let range = ((b * 6 + t) * 8)..<((b * 6 + t + 1) * 8)
                if b == 1 && t >= 3 {
                    #expect(Array(before[range]) != Array(after[range]), "token \(t) of sequence \(b) attends to the changed token")
                } else {
                    #expect(Array(before[range]) == Array(after[range]), "token \(t) of sequence \(b) must not see a later token or another sequence")
                }
            }
        }
    }

    @Test func attentionGradient() throws {
        expectGradientsMatch([TestData.uniform([2, 5, 24], seed: 264)]) { Tensor.causalSelfAttention(qkv: $0[0], heads: 2) }
    }

    @Test func attentionGradientWithDropout() throws {
        let key = DropoutKey(seed: 7, step: 1, layer: 0, site: 1, firstSequence: 0)
        expectGradientsMatch([TestData.uniform([2, 5, 24], seed: 265)]) { Tensor.causalSelfAttention(qkv: $0[0], heads: 2, dropout: 0.2, key: key) }
    }

    // Regression test: the backward once read the saved attention probabilities and the contiguous copy of a
    // non-contiguous qkv without keeping them alive (use-after-free; `attentionGradient` caught it too).
    @Test func attentionGradientOfANonContiguousInput() throws {
        expectGradientsMatch([TestData.uniform([24, 5, 2], seed: 266)]) { Tensor.causalSelfAttention(qkv: $0[0].permuted([2, 1, 0]), heads: 2) }
    }

    @Test func attentionDropoutAtTheFirstTokenKeepsOrDropsItsValueWhole() throws {
        // Token 0 attends only to itself with probability 1, so with dropout each head's output is either
        // v₀/(1−p) or exactly zero.
        let p: Float = 0.5, heads = 4, headSize = 2, width = heads * headSize
        let qkv = TestData.awayFromZero([16, 3, 3 * width], seed: 267)
        let key = DropoutKey(seed: 9, step: 0, layer: 0, site: 0, firstSequence: 0)
        let y = Tensor.causalSelfAttention(qkv: qkv, heads: heads, dropout: p, key: key).toArray()
        let x = qkv.toArray()
        var kept = 0, dropped = 0
        for b in 0..<16 {
            for h in 0..<heads {
                let out = (0..<headSize).map { y[b * 3 * width + h * headSize + $0] }
                let v = (0..<headSize).map { x[b * 3 * 3 * width + 2 * width + h * headSize + $0] }
                if out.allSatisfy({ $0 == 0 }) {
                    dropped += 1
                } else {
                    kept += 1
                    expectClose(out, v.map { Double($0 / (1 - p)) }, absolute: 1e-6, relative: 1e-5)
                }
            }
        }
        #expect(kept > 10 && dropped > 10, "kept \(kept), dropped \(dropped) of 64 Bernoulli(0.5) draws")
        // Same key, same result; another key, another mask.
        #expect(Tensor.causalSelfAttention(qkv: qkv, heads: heads, dropout: p, key: key).toArray() == y)
        var other = key
        other.step = 1
        #expect(Tensor.causalSelfAttention(qkv: qkv, heads: heads, dropout: p, key: other).toArray() != y)
    }

    @Test func attentionDropoutIsIndependentOfHowTheBatchIsSplit() throws {
        let qkv = TestData.uniform([4, 5, 24], seed: 268)
        let key = DropoutKey(seed: 11, step: 2, layer: 3, site: 0, firstSequence: 0)
        let whole = Tensor.causalSelfAttention(qkv: qkv, heads: 2, dropout: 0.3, key: key).toArray()
        var parts: [Float] = []
        for (start, count) in [(0, 1), (1, 3)] {
            var partKey = key
            partKey.firstSequence = start
            parts += Tensor.causalSelfAttention(qkv: qkv.slice(axis: 0, start..<(start + count)), heads: 2, dropout: 0.3, key: partKey).toArray()
        }
        #expect(parts == whole)
    }
}
