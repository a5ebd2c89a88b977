import ConvoyTensor
import Foundation
import Testing

/// The backward engine: accumulation, output gradients, grad mode, leaf hooks and interceptors, graph shapes.
@Suite struct AutogradEngineTests {
    @Test func gradientsAccumulateAcrossBackwardPasses() throws {
        let x = Tensor(shape: [3], values: [1, -2, 0.5], requiresGrad: true)
        try (x * x).sum().backward()
        #expect(x.grad?.toArray() == [2, -4, 1])
        try (x * 3).sum().backward()
        #expect(x.grad?.toArray() == [5, -1, 4])
        x.grad = nil
        try (x * 3).sum().backward()
        #expect(x.grad?.toArray() == [3, 3, 3])
    }

    /// The tape holds what backward functions read, not every intermediate output: (x + x) feeds an add whose
    /// backward reads nothing, so once the caller lets go of it only the final output stays allocated.
    @Test func theTapeDoesNotKeepOutputsNoBackwardReads() throws {
        let owner = 970_001  // counted apart from tests running at the same time
        let elements = 1 << 16, bytes = elements * 4  // a multiple of 4 KiB: the allocator rounds nothing
        let live = { TensorAllocator.shared.liveBytes(of: .other, owner: owner) }
        try TensorAllocator.withOwner(owner) {
            let x = Tensor(shape: [elements], values: Array(repeating: 1, count: elements), requiresGrad: true)
            let base = live()
            func chained(_ x: Tensor) -> Tensor { (x + x) + x }
            let z = chained(x)
            #expect(live() == base + bytes, "only the output should stay allocated; the intermediate sum is held by nothing but the tape")
            try z.sum().backward()
            #expect(x.grad?.toArray().allSatisfy { $0 == 3 } == true)
        }
    }

    @Test func backwardFromANonScalarOutput() throws {
        let x = Tensor(shape: [2, 3], values: [1, 2, 3, 4, 5, 6], requiresGrad: true)
        let y = x * x  // [2, 3]
        let g = Tensor(shape: [2, 3], values: [1, 0, -1, 0.5, 2, -3])
        try y.backward(outputGradient: g)
        #expect(x.grad?.toArray() == [2, 0, -6, 4, 20, -36])
    }

    @Test func backwardOnALeafDeliversACopyOfTheOutputGradient() throws {
        let x = Tensor(shape: [2], values: [1, 2], requiresGrad: true)
        let g = Tensor(shape: [2], values: [3, 4])
        try x.backward(outputGradient: g)
        try x.backward(outputGradient: g)
        #expect(x.grad?.toArray() == [6, 8])
        #expect(g.toArray() == [3, 4])
    }

    // SOURCE BUG (Sources/ConvoyTensor/Autograd/LeafGradHooks.swift, `accumulateGradient`, the
    // `isKnownUniquelyReferenced` branch, together with `Tensor.backward(outputGradient:)` in
    // BackwardEngine.swift): ops whose backward passes the incoming gradient through unchanged (add, add
    // scalar, copy) hand the caller's `outputGradient` tensor itself to the leaf. Its storage is referenced
    // only by that tensor object, so `accumulateGradient` adopts it as `grad` without copying: `x.grad` then
    // aliases the caller's tensor, and the next backward's in-place accumulation overwrites the caller's
    // gradient (a pipeline stage's received-gradient buffer, for instance). Proposed fix: copy in
    // `backward(outputGradient:)` (`withNoGrad { outputGradient.copy() }`, which also converts to float32),
    // or only adopt gradients the engine itself allocated.
    @Test func leafGradientDoesNotAliasTheCallersOutputGradient() throws {
        let x = Tensor(shape: [2], values: [1, 2], requiresGrad: true)
        let c = Tensor(shape: [2], values: [10, 20])
        let g = Tensor(shape: [2], values: [3, 4])
        try (x + c).backward(outputGradient: g)
        try (x + c).backward(outputGradient: g)
        #expect(x.grad?.toArray() == [6, 8])
        #expect(g.toArray() == [3, 4], "the caller's output gradient was modified by gradient accumulation")
        #expect(x.grad.map { !$0.sharesMemory(with: g) } == true)
    }

    @Test func backwardOutputGradientMayBeBFloat16() throws {
        let x = Tensor(shape: [2], values: [1, 2], requiresGrad: true)
        try (x * 2).backward(outputGradient: Tensor(shape: [2], values: [0.5, -1.5]).converted(to: .bfloat16))
        #expect(x.grad?.toArray() == [1, -3])
    }

    @Test func gradientForANonParameterInputLeaf() throws {
        // A pipeline stage marks the activation it received as requiring a gradient, to send that gradient
        // back to the previous stage.
        let weight = TestData.uniform([4, 3], seed: 301), bias = TestData.uniform([3], seed: 302)
        weight.requiresGrad = true
        bias.requiresGrad = true
        let received = TestData.uniform([2, 4], seed: 303)
        received.requiresGrad = true
        let upstream = TestData.uniform([2, 3], seed: 304)
        try Tensor.linear(received, weight: weight, bias: bias).tanh().backward(outputGradient: upstream)
        // d/dx of tanh(x·W + b) is (g ⊙ (1 − y²))·Wᵀ.
        let y = withNoGrad { Tensor.linear(received, weight: weight, bias: bias).tanh() }.doubles
        let local = zip(upstream.doubles, y).map { $0 * (1 - $1 * $1) }
        let expected = Reference.matmul(local, Reference.transpose(weight.doubles, rows: 4, columns: 3), m: 2, k: 3, n: 4)
        expectClose(received.grad?.toArray() ?? [], expected, absolute: 1e-6, relative: 1e-5)
        #expect(weight.grad != nil && bias.grad != nil)
        expectGradientsMatch([TestData.uniform([2, 4], seed: 303)]) { Tensor.linear($0[0], weight: weight, bias: bias).tanh() }
    }

    @Test func withNoGradRecordsNothing() throws {
        let x = Tensor(shape: [2, 2], values: [1, 2, 3, 4], requiresGrad: true)
        let w = Tensor(shape: [2, 2], values: [1, 0, 0, 1], requiresGrad: true)
        #expect(GradMode.isEnabled)
        let results: [Tensor] = withNoGrad {
            #expect(!GradMode.isEnabled)
            let nested = withNoGrad { x * 2 }
            return [x + w, x * w, x.matmul(w), x.exp(), x.softmax(), x.sum(), (x * x).mean(), x.transposed(), x.reshaped([4]),
                    x.slice(axis: 0, 0..<1), Tensor.linear(x, weight: w, bias: nil), x.copy(), nested]
        }
        #expect(GradMode.isEnabled, "grad mode is restored after withNoGrad")
        for (i, result) in results.enumerated() { #expect(!result.requiresGrad, "result \(i) was recorded") }
        #expect((x * w).requiresGrad)
    }

    @Test func gradModeIsRestoredWhenTheBodyThrows() throws {
        struct Failure: Error {}
        #expect(throws: Failure.self) { try withNoGrad { throw Failure() } }
        #expect(GradMode.isEnabled)
    }

    @Test func gradModeIsPerThread() throws {
        // Ranks of the Local backend are threads: one rank evaluating under withNoGrad must not stop
        // another from recording.
        let x = Tensor(shape: [2], values: [1, 2], requiresGrad: true)
        final class Outcome: @unchecked Sendable { var recorded = false }
        let outcome = Outcome()
        withNoGrad {
            let done = DispatchSemaphore(value: 0)
            let thread = Thread {
                outcome.recorded = (x * 2).requiresGrad
                done.signal()
            }
            thread.start()
            done.wait()
        }
        #expect(outcome.recorded)
    }

    @Test func postAccumulateHookSeesTheFinalGradientOnceForALeafUsedTwice() throws {
        let w = Tensor(shape: [2], values: [1.5, -2], requiresGrad: true)
        let x = Tensor(shape: [2], values: [3, 4])
        var seen: [[Float]] = []
        w.registerPostAccumulateGradHook { tensor in
            #expect(tensor === w)
            seen.append(tensor.grad?.toArray() ?? [])
        }
        // w is used by two operations: d/dw Σ(w·x + w²) = x + 2w.
        let loss = (w * x + w.squared()).sum()
        try loss.backward()
        #expect(seen == [[6, 0]])
        try (w * x + w.squared()).sum().backward()
        #expect(seen == [[6, 0], [12, 0]], "second backward: one more call, seeing the accumulated gradient")
    }

    @Test func hooksFireInReverseOrderOfUseAlongAChainOfLayers() throws {
        let weights = (0..<4).map { i -> Tensor in
            let w = TestData.uniform([3, 3], seed: 310 + UInt64(i))
            w.requiresGrad = true
            w.name = "w\(i)"
            return w
        }
        var order: [String] = []
        for w in weights { w.registerPostAccumulateGradHook { order.append($0.name ?? "?") } }
        var h = TestData.uniform([2, 3], seed: 320)
        for w in weights { h = h.matmul(w).tanh() }
        try h.sum().backward()
        #expect(order == ["w3", "w2", "w1", "w0"])
    }

    @Test func hookFiresOnlyAfterAllContributionsEvenWhenTheyAreFarApart() throws {
        // w is used at the start and the end of a chain; its hook must wait for the early use.
        let w = Tensor(shape: [2, 2], values: [0.5, -0.25, 0.75, 1], requiresGrad: true)
        let v = Tensor(shape: [2, 2], values: [1, 2, 3, 4], requiresGrad: true)
        var events: [String] = []
        w.registerPostAccumulateGradHook { _ in events.append("w") }
        v.registerPostAccumulateGradHook { _ in events.append("v") }
        let x = Tensor(shape: [1, 2], values: [1, -1])
        let y = x.matmul(w).matmul(v).matmul(w).sum()
        try y.backward()
        #expect(events == ["v", "w"])
        expectGradientsMatch([Tensor(shape: [2, 2], values: [0.5, -0.25, 0.75, 1])]) { inputs in
            x.matmul(inputs[0]).matmul(v).matmul(inputs[0])
        }
    }

    @Test func removedHookDoesNotFire() throws {
        let w = Tensor(shape: [1], values: [2], requiresGrad: true)
        var calls = 0, otherCalls = 0
        let handle = w.registerPostAccumulateGradHook { _ in calls += 1 }
        w.registerPostAccumulateGradHook { _ in otherCalls += 1 }
        try (w * 3).sum().backward()
        w.removeHook(handle)
        try (w * 3).sum().backward()
        #expect(calls == 1 && otherCalls == 2)
    }

    @Test func consumingInterceptorLeavesGradNilButHooksStillFire() throws {
        let w = Tensor(shape: [2], values: [1, 2], requiresGrad: true)
        var intercepted: [[Float]] = []
        var gradInHooks: [[Float]?] = []
        w.setGradientInterceptor { tensor, gradient in
            #expect(tensor === w)
            intercepted.append(gradient.toArray())
            return .consumed
        }
        w.registerPostAccumulateGradHook { tensor in gradInHooks.append(tensor.grad?.toArray()) }
        try (w * w * 2).sum().backward()
        #expect(w.grad == nil)
        #expect(intercepted == [[4, 8]])
        #expect(gradInHooks == [nil], "the hook fires once and sees no accumulated gradient")

        // An interceptor that lets the gradient through, then no interceptor.
        w.setGradientInterceptor { _, _ in .accumulate }
        try (w * 3).sum().backward()
        #expect(w.grad?.toArray() == [3, 3])
        w.setGradientInterceptor(nil)
        try (w * 3).sum().backward()
        #expect(w.grad?.toArray() == [6, 6])
        #expect(intercepted == [[4, 8]])
        #expect(gradInHooks == [nil, [3, 3], [6, 6]])
    }

    @Test func diamondGraphSumsBothBranches() throws {
        // x → u = tanh(x) → (3u, u²) → sum: dL/dx = (3 + 2u)(1 − u²).
        let values: [Float] = [0.3, -0.7, 1.1]
        let x = Tensor(shape: [3], values: values, requiresGrad: true)
        var hookCalls = 0
        x.registerPostAccumulateGradHook { _ in hookCalls += 1 }
        let u = x.tanh()
        try (u * 3 + u.squared()).sum().backward()
        let expected = values.map { v -> Double in let u = Foundation.tanh(Double(v)); return (3 + 2 * u) * (1 - u * u) }
        expectClose(x.grad?.toArray() ?? [], expected, absolute: 1e-6, relative: 1e-5)
        #expect(hookCalls == 1)
        expectGradientsMatch([Tensor(shape: [3], values: values)]) { inputs in
            let u = inputs[0].tanh()
            return u * 3 + u.squared()
        }
    }

    @Test func branchThatProducesNoGradientStillReleasesItsLeaves() throws {
        // A custom op whose backward returns nil: the subtree below it gets no gradient, but a leaf reached
        // both through it and directly must still be finalised, once, with the direct contribution only.
        let w = Tensor(shape: [2], values: [1, 2], requiresGrad: true)
        var hookCalls = 0
        w.registerPostAccumulateGradHook { _ in hookCalls += 1 }
        let hidden = w * 3
        let stopped = Tensor.record(withNoGrad { hidden * 1 }, operation: "stopGradient", inputs: [hidden]) { _ in [nil] }
        try (stopped + w * 5).sum().backward()
        #expect(w.grad?.toArray() == [5, 5])
        #expect(hookCalls == 1)

        // Only the no-gradient path: the leaf is reached but receives nothing.
        let v = Tensor(shape: [2], values: [1, 2], requiresGrad: true)
        var vHookCalls = 0
        v.registerPostAccumulateGradHook { _ in vHookCalls += 1 }
        let onlyStopped = Tensor.record(withNoGrad { v * 1 }, operation: "stopGradient", inputs: [v * 2]) { _ in [nil] }
        try (onlyStopped * 2).sum().backward()
        #expect(v.grad == nil)
        #expect(vHookCalls == 0)
    }

    @Test func customRecordedOpWithAnInputThatNeedsNoGradient() throws {
        // `record` calls backward only with gradients for inputs that require them.
        let a = Tensor(shape: [2], values: [1, 2], requiresGrad: true)
        let b = Tensor(shape: [2], values: [3, 4])
        let y = Tensor.record(withNoGrad { a * b }, operation: "customMultiply", inputs: [b, a]) { gradient in
            [nil, gradient * b]
        }
        try y.sum().backward()
        #expect(a.grad?.toArray() == [3, 4])
        #expect(b.grad == nil)

        // An input that requires a gradient may still get nil from backward (no contribution) while another
        // input needs none: the positions must stay aligned.
        let c = Tensor(shape: [2], values: [5, 6], requiresGrad: true)
        let z = Tensor.record(withNoGrad { a + c }, operation: "partial", inputs: [b, a, c]) { gradient in
            [gradient * 100, nil, gradient * 2]
        }
        try z.sum().backward()
        #expect(a.grad?.toArray() == [3, 4], "a received no contribution")
        #expect(c.grad?.toArray() == [2, 2])
        #expect(b.grad == nil)
    }

    @Test func secondBackwardThroughAFreedGraphTraps() async throws {
        await #expect(processExitsWith: .failure) {
            let x = Tensor(shape: [2], values: [1, 2], requiresGrad: true)
            let loss = (x * x).sum()
            try loss.backward()
            try loss.backward()
        }
    }

    @Test func backwardOfATensorThatNeedsNoGradientTraps() async throws {
        await #expect(processExitsWith: .failure) {
            try Tensor(shape: [1], values: [1]).backward()
        }
    }
}
