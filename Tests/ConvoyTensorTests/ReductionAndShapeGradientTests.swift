import ConvoyTensor
import Foundation
import Testing

/// sum / mean / max over axes, and the shape operations (views and copies).
@Suite struct ReductionAndShapeGradientTests {
    struct ReductionCase: Sendable, CustomTestStringConvertible {
        var axes: [Int]?
        var keepingDimensions: Bool
        var testDescription: String { "axes \(axes.map { "\($0)" } ?? "all"), keep \(keepingDimensions)" }
    }

    static let shape = [2, 3, 4]

    /// Every kind of axis set over a [2, 3, 4] tensor: all, each single axis (also negative), leading pairs
    /// (the vectorised leading-axes kernel), a non-adjacent pair, a trailing pair — with and without keeping
    /// dimensions.
    static let reductionCases: [ReductionCase] = [nil, [0], [1], [2], [-1], [0, 1], [0, 2], [1, 2], [2, 0], [0, 1, 2]]
        .flatMap { axes in [false, true].map { ReductionCase(axes: axes, keepingDimensions: $0) } }

    static let singleAxisCases = reductionCases.filter { $0.axes?.count == 1 }

    @Test(arguments: reductionCases)
    func sumGradientAndForward(_ c: ReductionCase) {
        let x = TestData.uniform(Self.shape, seed: 41)
        let result = x.sum(axes: c.axes, keepingDimensions: c.keepingDimensions)
        let expected = Reference.reduce(x.doubles, shape: Self.shape, axes: c.axes, keepingDimensions: c.keepingDimensions, initial: 0, +)
        #expect(result.shape == expected.shape)
        expectClose(result.toArray(), expected.values, absolute: 1e-6, relative: 1e-6)
        expectGradientsMatch([TestData.uniform(Self.shape, seed: 41)]) { $0[0].sum(axes: c.axes, keepingDimensions: c.keepingDimensions) }
    }

    @Test(arguments: reductionCases)
    func meanGradientAndForward(_ c: ReductionCase) {
        let x = TestData.uniform(Self.shape, seed: 42)
        let result = x.mean(axes: c.axes, keepingDimensions: c.keepingDimensions)
        let sums = Reference.reduce(x.doubles, shape: Self.shape, axes: c.axes, keepingDimensions: c.keepingDimensions, initial: 0, +)
        let extent = Double(x.count / max(sums.values.count, 1))
        #expect(result.shape == sums.shape)
        expectClose(result.toArray(), sums.values.map { $0 / extent }, absolute: 1e-6, relative: 1e-6)
        // The gradient is 1/extent per element: scale the weights up so it is well above the noise floor.
        expectGradientsMatch([TestData.uniform(Self.shape, seed: 42)]) { $0[0].mean(axes: c.axes, keepingDimensions: c.keepingDimensions) * 8 }
    }

    @Test(arguments: singleAxisCases)
    func maxOverOneAxisGradientAndForward(_ c: ReductionCase) {
        // Distinct values 0.1 apart: no ties, and no near-ties that a ±ε step could flip.
        let x = TestData.distinct(Self.shape, seed: 43)
        let result = x.max(axes: c.axes, keepingDimensions: c.keepingDimensions)
        let expected = Reference.reduce(x.doubles, shape: Self.shape, axes: c.axes, keepingDimensions: c.keepingDimensions, initial: -.infinity, Swift.max)
        #expect(result.shape == expected.shape)
        expectClose(result.toArray(), expected.values, absolute: 0, relative: 0)
        expectGradientsMatch([TestData.distinct(Self.shape, seed: 43)]) { $0[0].max(axes: c.axes, keepingDimensions: c.keepingDimensions) }
    }

    @Test func maxOfARankOneTensorOverItsOnlyAxis() throws {
        expectGradientsMatch([TestData.distinct([7], seed: 44)]) { $0[0].max(axes: [0]) }
        expectGradientsMatch([TestData.distinct([7], seed: 44)]) { $0[0].max() }
    }

    @Test func maxGradientGoesToTheFirstOfTiedElements() throws {
        let x = Tensor(shape: [2, 3], values: [1, 5, 5, 2, 2, 0], requiresGrad: true)
        try x.max(axes: [1]).sum().backward()
        #expect(x.grad?.toArray() == [0, 1, 0, 1, 0, 0])
    }

    @Test func maxForwardOverSeveralAxes() throws {
        let x = TestData.distinct(Self.shape, seed: 45)
        for c in Self.reductionCases where (c.axes?.count ?? 3) > 1 {
            let expected = Reference.reduce(x.doubles, shape: Self.shape, axes: c.axes, keepingDimensions: c.keepingDimensions, initial: -.infinity, Swift.max)
            let result = x.max(axes: c.axes, keepingDimensions: c.keepingDimensions)
            #expect(result.shape == expected.shape, "\(c.testDescription)")
            #expect(result.toArray() == expected.values.map(Float.init), "\(c.testDescription)")
        }
    }

    // SOURCE BUG (Sources/ConvoyTensor/Ops/Tensor+Reductions.swift, `max`, backward closure): the gradient of a
    // max over two or more axes (including `max()` over all axes of a rank ≥ 2 tensor) traps in `permuted`:
    // `permutedShape = layout.keptShape + [length]` folds the reduced axes into one, so the rank no longer
    // matches the `inverse` permutation built for the original rank. Run in a child process (exit test) so
    // the trap fails this test instead of killing the whole run. Proposed fix:
    // `let permutedShape = layout.keptShape + layout.axes.map { shape[$0] }` (captured outside the closure).
    @Test func maxOverSeveralAxesHasTheRightGradient() async throws {
        await #expect(processExitsWith: .success, "max over several axes traps or gives a wrong gradient (see SOURCE BUG above)") {
            let cases: [([Int]?, Bool)] = [([0, 2], false), ([0, 2], true), ([1, 2], false), ([0, 1], true), (nil, false), (nil, true)]
            for (axes, keep) in cases {
                let report = try GradientCheck.compare([TestData.distinct([2, 3, 4], seed: 46)]) { $0[0].max(axes: axes, keepingDimensions: keep) }
                if !report.passed {
                    print("max(axes: \(String(describing: axes)), keepingDimensions: \(keep)): \(report)")
                    exit(1)
                }
            }
        }
    }

    @Test func reductionsOfNonContiguousViews() throws {
        expectGradientsMatch([TestData.uniform([4, 3], seed: 47)], "sum over the leading axis of a transposed view") {
            $0[0].transposed().sum(axes: [0])
        }
        expectGradientsMatch([TestData.uniform([4, 3, 2], seed: 48)], "sum over leading axes of a permuted view") {
            $0[0].permuted([2, 0, 1]).sum(axes: [0, 1])
        }
        expectGradientsMatch([TestData.distinct([4, 3], seed: 49)], "max of a transposed view") {
            $0[0].transposed().max(axes: [1])
        }
        let x = TestData.uniform([4, 3], seed: 50)
        expectClose(x.transposed().sum(axes: [0]).toArray(), Reference.reduce(x.doubles, shape: [4, 3], axes: [1], keepingDimensions: false, initial: 0, +).values)
    }

    @Test func largeLeadingAxisSumMatchesDoubleReference() throws {
        // Big enough for the parallel, vectorised leading-axes kernel to split columns across threads.
        let x = TestData.uniform([300, 1030], seed: 51)
        let expected = Reference.reduce(x.doubles, shape: [300, 1030], axes: [0], keepingDimensions: false, initial: 0, +)
        expectClose(x.sum(axes: [0]).toArray(), expected.values, absolute: 1e-4, relative: 1e-5)
        let rows = Reference.reduce(x.doubles, shape: [300, 1030], axes: [1], keepingDimensions: true, initial: 0, +)
        expectClose(x.sum(axes: [1], keepingDimensions: true).toArray(), rows.values, absolute: 1e-4, relative: 1e-5)
    }

    // MARK: Views and copies

    @Test func reshapeGradient() throws {
        expectGradientsMatch([TestData.uniform([2, 3, 4], seed: 52)], "contiguous") { $0[0].reshaped([4, 6]) }
        expectGradientsMatch([TestData.uniform([2, 3, 4], seed: 52)], "inferred axis") { $0[0].reshaped([-1, 2]) }
        expectGradientsMatch([TestData.uniform([2, 3, 4], seed: 52)], "of a non-contiguous view") { $0[0].transposed(0, 2).reshaped([6, 4]) }
        expectGradientsMatch([TestData.uniform([2, 3], seed: 53)], "unsqueezed") { $0[0].unsqueezed(1).squared() }
    }

    @Test func reshapeOfATransposedViewReordersElements() throws {
        let x = Tensor(shape: [2, 3], values: [0, 1, 2, 3, 4, 5])
        #expect(x.transposed().reshaped([6]).toArray() == [0, 3, 1, 4, 2, 5])
        #expect(x.unsqueezed(0).shape == [1, 2, 3])
        #expect(x.unsqueezed(-1).shape == [2, 3, 1])
    }

    @Test func permuteAndTransposeGradientAndForward() throws {
        let x = TestData.uniform([2, 3, 4], seed: 54)
        let permutation = [2, 0, 1]
        #expect(x.permuted(permutation).shape == [4, 2, 3])
        #expect(x.permuted(permutation).toArray() == Reference.permute(x.doubles, shape: [2, 3, 4], axes: permutation).map(Float.init))
        #expect(x.transposed(0, 2).toArray() == Reference.permute(x.doubles, shape: [2, 3, 4], axes: [2, 1, 0]).map(Float.init))
        // Multiplying by a constant of the permuted shape makes the gradient depend on the element order.
        let c = TestData.uniform([4, 2, 3], seed: 55)
        expectGradientsMatch([TestData.uniform([2, 3, 4], seed: 54)], "permuted") { $0[0].permuted(permutation) * c }
        expectGradientsMatch([TestData.uniform([2, 3, 4], seed: 54)], "transposed(0, 2)") { $0[0].transposed(0, 2) }
        expectGradientsMatch([TestData.uniform([2, 3, 4], seed: 54)], "transposed()") { $0[0].transposed().squared() }
        expectGradientsMatch([TestData.uniform([2, 3, 4], seed: 54)], "permute of a permute") { $0[0].permuted([1, 2, 0]).permuted([2, 0, 1]) * 2 }
    }

    @Test func sliceGradientAndForward() throws {
        let x = Tensor(shape: [4, 3], values: (0..<12).map(Float.init))
        #expect(x.slice(axis: 0, 1..<3).toArray() == [3, 4, 5, 6, 7, 8])
        #expect(x.slice(axis: 1, 1..<3).toArray() == [1, 2, 4, 5, 7, 8, 10, 11])
        #expect(x.slice(axis: -1, 2..<3).toArray() == [2, 5, 8, 11])
        expectGradientsMatch([TestData.uniform([4, 3], seed: 56)], "axis 0") { $0[0].slice(axis: 0, 1..<3) }
        expectGradientsMatch([TestData.uniform([4, 3], seed: 56)], "axis 1") { $0[0].slice(axis: 1, 1..<3).squared() }
        expectGradientsMatch([TestData.uniform([2, 4, 3], seed: 57)], "middle axis of 3-D") { $0[0].slice(axis: 1, 0..<2) }
        expectGradientsMatch([TestData.uniform([4, 3], seed: 56)], "of a transposed view") { $0[0].transposed().slice(axis: 1, 2..<4) }
        expectGradientsMatch([TestData.uniform([4, 3], seed: 56)], "overlapping slices") { inputs in
            inputs[0].slice(axis: 0, 0..<3) * inputs[0].slice(axis: 0, 1..<4)
        }
    }

    @Test func splitAndChunkedGradientAndForward() throws {
        let x = Tensor(shape: [4, 3], values: (0..<12).map(Float.init))
        let parts = x.split(axis: 0, sizes: [1, 3])
        #expect(parts.map(\.shape) == [[1, 3], [3, 3]])
        #expect(parts[1].toArray() == (3..<12).map(Float.init))
        let chunks = Tensor(shape: [2, 4, 3], values: (0..<24).map(Float.init)).chunked(2, axis: 1)
        #expect(chunks.map(\.shape) == [[2, 2, 3], [2, 2, 3]])
        #expect(chunks[1].toArray() == [6, 7, 8, 9, 10, 11, 18, 19, 20, 21, 22, 23])

        // Each part is weighted by its own constant so that a mix-up between parts changes the gradient.
        let c0 = TestData.uniform([1, 3], seed: 58), c1 = TestData.uniform([3, 3], seed: 59)
        expectGradientsMatch([TestData.uniform([4, 3], seed: 60)], "split along axis 0") { inputs in
            let parts = inputs[0].split(axis: 0, sizes: [1, 3])
            return (parts[0] * c0).sum() + (parts[1].squared() * c1).sum()
        }
        let d = TestData.uniform([2, 2, 3], seed: 61)
        expectGradientsMatch([TestData.uniform([2, 4, 3], seed: 62)], "chunked along axis 1") { inputs in
            let chunks = inputs[0].chunked(2, axis: 1)
            return chunks[0] * d - chunks[1] * 3
        }
    }

    @Test func concatenateGradientAndForward() throws {
        let a = Tensor(shape: [1, 2], values: [1, 2]), b = Tensor(shape: [2, 2], values: [3, 4, 5, 6])
        #expect(Tensor.concatenate([a, b], axis: 0).toArray() == [1, 2, 3, 4, 5, 6])
        #expect(Tensor.concatenate([b, b.slice(axis: 1, 0..<1)], axis: 1).toArray() == [3, 4, 3, 5, 6, 5])

        expectGradientsMatch([TestData.uniform([1, 3], seed: 63), TestData.uniform([2, 3], seed: 64), TestData.uniform([3, 3], seed: 65)], "axis 0") {
            Tensor.concatenate($0, axis: 0)
        }
        expectGradientsMatch([TestData.uniform([2, 1, 4], seed: 66), TestData.uniform([2, 3, 4], seed: 67)], "axis 1 of 3-D") {
            Tensor.concatenate($0, axis: 1)
        }
        expectGradientsMatch([TestData.uniform([2, 2], seed: 68), TestData.uniform([2, 3], seed: 69)], "axis -1, non-contiguous input") {
            Tensor.concatenate([$0[0].transposed(), $0[1]], axis: -1).squared()
        }
        let constant = TestData.uniform([2, 3], seed: 70)
        expectGradientsMatch([TestData.uniform([1, 3], seed: 71)], "with an input that needs no gradient, used twice") {
            Tensor.concatenate([constant, $0[0], $0[0]], axis: 0)
        }
    }

    @Test func broadcastToAndCopyGradient() throws {
        let c = TestData.uniform([2, 3, 4], seed: 72)
        expectGradientsMatch([TestData.uniform([3, 1], seed: 73)], "[3, 1] → [2, 3, 4]") { $0[0].broadcast(to: [2, 3, 4]) * c }
        expectGradientsMatch([TestData.uniform([4], seed: 74)], "[4] → [3, 4]") { $0[0].broadcast(to: [3, 4]) }
        expectGradientsMatch([TestData.uniform([3, 4], seed: 75)], "copy of a transposed view") { $0[0].transposed().copy() }
        expectGradientsMatch([TestData.uniform([3, 4], seed: 75)], "contiguous() of a transposed view") { $0[0].transposed().contiguous() }
        let x = Tensor(shape: [3, 1], values: [1, 2, 3])
        #expect(x.broadcast(to: [2, 3, 2]).toArray() == [1, 1, 2, 2, 3, 3, 1, 1, 2, 2, 3, 3])
    }
}
