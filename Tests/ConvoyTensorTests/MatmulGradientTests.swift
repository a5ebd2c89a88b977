import ConvoyTensor
import Testing

/// matmul (2-D, folded leading axes, batched, transposed views) and the fused linear layer.
@Suite struct MatmulGradientTests {
    /// The Double reference product of `a` [..., m, k] and `b` ([k, n] shared, or [..., k, n] batched), both
    /// given as row-major values of their logical shapes.
    static func referenceProduct(_ a: Tensor, _ b: Tensor) -> [Double] {
        let m = a.shape[a.rank - 2], k = a.shape[a.rank - 1], n = b.shape[b.rank - 1]
        let batches = a.count / (m * k)
        let av = a.doubles, bv = b.doubles
        var result: [Double] = []
        for batch in 0..<batches {
            let aBlock = Array(av[(batch * m * k)..<((batch + 1) * m * k)])
            let bBlock = b.rank == 2 ? bv : Array(bv[(batch * k * n)..<((batch + 1) * k * n)])
            result += Reference.matmul(aBlock, bBlock, m: m, k: k, n: n)
        }
        return result
    }

    static func expectProductMatches(_ a: Tensor, _ b: Tensor, sourceLocation: SourceLocation = #_sourceLocation) {
        let product = a.matmul(b)
        #expect(product.shape == Array(a.shape.dropLast()) + [b.shape.last!], sourceLocation: sourceLocation)
        let k = a.shape.last!
        expectClose(product.toArray(), referenceProduct(a, b), absolute: 1e-6 * Double(k), relative: 1e-5, sourceLocation: sourceLocation)
    }

    // MARK: Forward

    @Test func twoDimensionalProductMatchesNaiveLoops() {
        Self.expectProductMatches(TestData.uniform([3, 4], seed: 81), TestData.uniform([4, 5], seed: 82))
        Self.expectProductMatches(TestData.uniform([1, 7], seed: 83), TestData.uniform([7, 1], seed: 84))
    }

    @Test func transposedViewsAreReadCorrectly() {
        let aStored = TestData.uniform([4, 3], seed: 85), bStored = TestData.uniform([5, 4], seed: 86)
        let a = aStored.transposed(), b = bStored.transposed()  // [3, 4] and [4, 5], column-major views
        #expect(!a.isContiguous && !b.isContiguous)
        Self.expectProductMatches(a, b)
        Self.expectProductMatches(a, TestData.uniform([4, 5], seed: 87))
        Self.expectProductMatches(TestData.uniform([3, 4], seed: 88), b)
        // A view that is neither row- nor column-major (a strided slice) is copied first.
        let wide = TestData.uniform([3, 8], seed: 89)
        Self.expectProductMatches(wide.slice(axis: 1, 2..<6), TestData.uniform([4, 2], seed: 90))
    }

    @Test func leadingAxesAreFoldedIntoRows() {
        Self.expectProductMatches(TestData.uniform([2, 3, 4], seed: 91), TestData.uniform([4, 5], seed: 92))
        Self.expectProductMatches(TestData.uniform([2, 2, 3, 4], seed: 93), TestData.uniform([4, 5], seed: 94))
        // A non-contiguous 3-D left operand.
        Self.expectProductMatches(TestData.uniform([4, 3, 2], seed: 95).permuted([2, 1, 0]), TestData.uniform([4, 5], seed: 96))
    }

    @Test(arguments: [1, 2, 5])
    func batchedProduct(batches: Int) {
        // 1 batch runs parallel sgemm per batch; 5 run single-threaded sgemms over the pool.
        Self.expectProductMatches(TestData.uniform([batches, 3, 4], seed: 97), TestData.uniform([batches, 4, 5], seed: 98))
        let bT = TestData.uniform([batches, 5, 4], seed: 99).transposed(1, 2)
        let aT = TestData.uniform([batches, 4, 3], seed: 100).transposed(1, 2)
        Self.expectProductMatches(aT, bT)
        Self.expectProductMatches(TestData.uniform([2, batches, 3, 4], seed: 101), TestData.uniform([2, batches, 4, 5], seed: 102))
    }

    @Test(arguments: [1, 2, 3])
    func largeProductsSplitAcrossThreadsMatchNaiveLoops(threads: Int) {
        let pool = TestPools.pool(threads: threads)
        ComputePool.withPool(pool) {
            // Tall: split into row blocks. Wide and short: split into column blocks.
            Self.expectProductMatches(TestData.uniform([70, 50], seed: 103), TestData.uniform([50, 90], seed: 104))
            Self.expectProductMatches(TestData.uniform([8, 64], seed: 105), TestData.uniform([64, 300], seed: 106))
            Self.expectProductMatches(TestData.uniform([64, 8], seed: 107).transposed(), TestData.uniform([300, 64], seed: 108).transposed())
            Self.expectProductMatches(TestData.uniform([3, 37, 40], seed: 109), TestData.uniform([3, 40, 41], seed: 110))
        }
    }

    @Test func emptyInnerDimensionGivesZeros() {
        let product = Tensor.zeros([3, 0]).matmul(Tensor.zeros([0, 4]))
        #expect(product.shape == [3, 4])
        #expect(product.toArray() == [Float](repeating: 0, count: 12))
    }

    // MARK: Gradients

    @Test func twoDimensionalGradient() {
        expectGradientsMatch([TestData.uniform([3, 4], seed: 111), TestData.uniform([4, 5], seed: 112)]) { $0[0].matmul($0[1]) }
    }

    @Test func gradientThroughTransposedViews() {
        expectGradientsMatch([TestData.uniform([4, 3], seed: 113), TestData.uniform([5, 4], seed: 114)], "both transposed") {
            $0[0].transposed().matmul($0[1].transposed())
        }
        expectGradientsMatch([TestData.uniform([3, 4], seed: 115), TestData.uniform([5, 4], seed: 116)], "x·yᵀ") {
            $0[0].matmul($0[1].transposed())
        }
        expectGradientsMatch([TestData.uniform([4, 3], seed: 117), TestData.uniform([4, 5], seed: 118)], "xᵀ·y") {
            $0[0].transposed().matmul($0[1])
        }
    }

    @Test func gradientWithLeadingAxes() {
        expectGradientsMatch([TestData.uniform([2, 3, 4], seed: 119), TestData.uniform([4, 5], seed: 120)], "[2,3,4]·[4,5]") { $0[0].matmul($0[1]) }
        expectGradientsMatch([TestData.uniform([2, 2, 3, 4], seed: 121), TestData.uniform([4, 2], seed: 122)], "[2,2,3,4]·[4,2]") { $0[0].matmul($0[1]) }
        expectGradientsMatch([TestData.uniform([4, 3, 2], seed: 123), TestData.uniform([4, 5], seed: 124)], "permuted left operand") {
            $0[0].permuted([2, 1, 0]).matmul($0[1])
        }
    }

    @Test func batchedGradient() {
        expectGradientsMatch([TestData.uniform([2, 3, 4], seed: 125), TestData.uniform([2, 4, 5], seed: 126)], "batched") { $0[0].matmul($0[1]) }
        expectGradientsMatch([TestData.uniform([3, 3, 4], seed: 127), TestData.uniform([3, 5, 4], seed: 128)], "batched, b transposed (Q·Kᵀ)") {
            $0[0].matmul($0[1].transposed(1, 2))
        }
        expectGradientsMatch([TestData.uniform([2, 4, 3], seed: 129), TestData.uniform([2, 4, 5], seed: 130)], "batched, a transposed") {
            $0[0].transposed(1, 2).matmul($0[1])
        }
        expectGradientsMatch([TestData.uniform([2, 2, 3, 4], seed: 131), TestData.uniform([2, 2, 4, 2], seed: 132)], "two batch axes") { $0[0].matmul($0[1]) }
    }

    @Test func gradientWhenOnlyOneOperandRequiresIt() {
        let a = TestData.uniform([3, 4], seed: 133), b = TestData.uniform([4, 5], seed: 134)
        expectGradientsMatch([TestData.uniform([4, 5], seed: 135)], "right only") { a.matmul($0[0]) }
        expectGradientsMatch([TestData.uniform([3, 4], seed: 136)], "left only") { $0[0].matmul(b) }
        let batchedA = TestData.uniform([2, 3, 4], seed: 137)
        expectGradientsMatch([TestData.uniform([2, 4, 5], seed: 138)], "batched right only") { batchedA.matmul($0[0]) }
    }

    @Test func gradientOfASquaredProduct() {
        // x·x needs both contributions to the same leaf.
        expectGradientsMatch([TestData.uniform([4, 4], seed: 139)]) { $0[0].matmul($0[0]) }
    }

    // MARK: Linear

    static func referenceLinear(_ x: Tensor, _ weight: Tensor, _ bias: Tensor?) -> [Double] {
        let inFeatures = weight.shape[0], outFeatures = weight.shape[1]
        let rows = x.count / inFeatures
        var y = Reference.matmul(x.doubles, weight.doubles, m: rows, k: inFeatures, n: outFeatures)
        if let bias {
            let b = bias.doubles
            for i in 0..<y.count { y[i] += b[i % outFeatures] }
        }
        return y
    }

    @Test func linearForwardMatchesReference() {
        let x = TestData.uniform([2, 3, 4], seed: 141), w = TestData.uniform([4, 5], seed: 142), b = TestData.uniform([5], seed: 143)
        let y = Tensor.linear(x, weight: w, bias: b)
        #expect(y.shape == [2, 3, 5])
        expectClose(y.toArray(), Self.referenceLinear(x, w, b))
        expectClose(Tensor.linear(x, weight: w, bias: nil).toArray(), Self.referenceLinear(x, w, nil))
        // Weight given as a transposed view (tied embeddings: the [vocabulary, width] table, transposed).
        let table = TestData.uniform([5, 4], seed: 144)
        expectClose(Tensor.linear(x, weight: table.transposed(), bias: b).toArray(), Self.referenceLinear(x, table.transposed().contiguous(), b))
        // Large enough for the parallel path.
        let big = TestData.uniform([64, 96], seed: 145), bigW = TestData.uniform([96, 80], seed: 146), bigB = TestData.uniform([80], seed: 147)
        expectClose(Tensor.linear(big, weight: bigW, bias: bigB).toArray(), Self.referenceLinear(big, bigW, bigB), absolute: 1e-4, relative: 1e-5)
    }

    @Test func linearGradient() {
        expectGradientsMatch([TestData.uniform([3, 4], seed: 151), TestData.uniform([4, 5], seed: 152), TestData.uniform([5], seed: 153)], "with bias") {
            Tensor.linear($0[0], weight: $0[1], bias: $0[2])
        }
        expectGradientsMatch([TestData.uniform([3, 4], seed: 151), TestData.uniform([4, 5], seed: 152)], "without bias") {
            Tensor.linear($0[0], weight: $0[1], bias: nil)
        }
        expectGradientsMatch([TestData.uniform([2, 3, 4], seed: 154), TestData.uniform([4, 5], seed: 155), TestData.uniform([5], seed: 156)], "3-D input") {
            Tensor.linear($0[0], weight: $0[1], bias: $0[2])
        }
        expectGradientsMatch([TestData.uniform([2, 3, 4], seed: 157), TestData.uniform([5, 4], seed: 158)], "weight is a transposed view") {
            Tensor.linear($0[0], weight: $0[1].transposed(), bias: nil)
        }
        expectGradientsMatch([TestData.uniform([4, 3], seed: 159), TestData.uniform([4, 5], seed: 160), TestData.uniform([5], seed: 161)], "non-contiguous input") {
            Tensor.linear($0[0].transposed(), weight: $0[1], bias: $0[2])
        }
    }

    @Test func linearGradientForSubsetsOfInputs() {
        let x = TestData.uniform([3, 4], seed: 162), w = TestData.uniform([4, 5], seed: 163), b = TestData.uniform([5], seed: 164)
        expectGradientsMatch([TestData.uniform([3, 4], seed: 162)], "input only (frozen layer)") { Tensor.linear($0[0], weight: w, bias: b) }
        expectGradientsMatch([TestData.uniform([4, 5], seed: 163)], "weight only") { Tensor.linear(x, weight: $0[0], bias: b) }
        expectGradientsMatch([TestData.uniform([5], seed: 164)], "bias only") { Tensor.linear(x, weight: w, bias: $0[0]) }
        expectGradientsMatch([TestData.uniform([4, 5], seed: 163), TestData.uniform([5], seed: 164)], "parameters, not input") {
            Tensor.linear(x, weight: $0[0], bias: $0[1])
        }
    }
}
