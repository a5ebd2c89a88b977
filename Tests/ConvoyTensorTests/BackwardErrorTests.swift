import ConvoyTensor
import Testing

/// A failure injected into one step of a backward pass.
private struct InjectedFailure: Error, CustomStringConvertible {
    var description: String { "injected failure" }
}

/// Errors thrown inside backward — by an operation's backward function, a gradient interceptor or a
/// post-accumulate-grad hook — reach the caller of `backward()`, naming the step, and leave the gradients in
/// the state `BackwardError` documents.
@Suite struct BackwardErrorTests {
    @Test func failingOperationStopsThePassAndIsNamed() throws {
        let a = Tensor(shape: [2], values: [1, 2], requiresGrad: true)
        let b = Tensor(shape: [2], values: [3, 4], requiresGrad: true)
        var bHookCalls = 0
        b.registerPostAccumulateGradHook { _ in bHookCalls += 1 }
        // Recorded first, so it runs after `b * 2` (latest first): b's gradient is final before the failure.
        let gathered = Tensor.record(withNoGrad { a * 1 }, operation: "flaky gather", inputs: [a]) { _ in throw InjectedFailure() }
        let loss = (gathered + b * 2).sum()
        let error = try #require(throws: BackwardError.self) { try loss.backward() }
        #expect(error.operation == "flaky gather")
        #expect(error.underlying is InjectedFailure)
        #expect("\(error)" == "backward of flaky gather: injected failure")
        #expect(b.grad?.toArray() == [2, 2], "a leaf finished before the failure keeps its gradient")
        #expect(bHookCalls == 1)
        #expect(a.grad == nil, "a leaf after the failure is untouched")
    }

    @Test func failureBelowAnotherOperationNamesTheInnermostStep() throws {
        let a = Tensor(shape: [2], values: [1, 2], requiresGrad: true)
        let failing = Tensor.record(withNoGrad { a * 1 }, operation: "inner", inputs: [a]) { _ in throw InjectedFailure() }
        let error = try #require(throws: BackwardError.self) { try (failing.tanh() * 3).sum().backward() }
        #expect(error.operation == "inner")
    }

    @Test func throwingHookIsNamedAfterItsTensor() throws {
        let w = Tensor(shape: [2], values: [1, 2], requiresGrad: true)
        w.name = "layer.weight"
        var laterHookCalls = 0
        w.registerPostAccumulateGradHook { _ in throw InjectedFailure() }
        w.registerPostAccumulateGradHook { _ in laterHookCalls += 1 }
        let error = try #require(throws: BackwardError.self) { try (w * 3).sum().backward() }
        #expect("\(error)" == "backward of post-accumulate-grad hook of 'layer.weight': injected failure")
        #expect(w.grad?.toArray() == [3, 3], "the gradient was accumulated before the hook ran")
        #expect(laterHookCalls == 0, "hooks after the failing one do not run")
    }

    @Test func throwingInterceptorLeavesTheGradientUnaccumulated() throws {
        let w = Tensor(shape: [2], values: [1, 2], requiresGrad: true)
        w.setGradientInterceptor { _, _ in throw InjectedFailure() }
        let error = try #require(throws: BackwardError.self) { try (w * 3).sum().backward() }
        #expect(error.operation == "gradient interceptor of an unnamed tensor of shape \(w.shape)")
        #expect(w.grad == nil)
        // The leaf itself stays usable: a new graph backpropagates once the interceptor is gone.
        w.setGradientInterceptor(nil)
        try (w * 3).sum().backward()
        #expect(w.grad?.toArray() == [3, 3])
    }
}
