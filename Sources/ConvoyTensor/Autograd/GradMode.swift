/// Whether operations on this thread are recorded on the autograd tape.
public enum GradMode {
    private static let enabledOnThread = ThreadLocal<Bool> { true }

    /// True unless the thread is inside ``withNoGrad(_:)``.
    public static var isEnabled: Bool { enabledOnThread.value }

    /// Runs `body` without recording operations (evaluation, optimizer updates, weight loading).
    public static func withNoGrad<Result>(_ body: () throws -> Result) rethrows -> Result {
        try enabledOnThread.withValue(false, body)
    }

    /// Runs `body` recording operations even inside ``withNoGrad(_:)`` or a backward pass (activation
    /// recompute replays a forward on the tape from within backward).
    public static func withGrad<Result>(_ body: () throws -> Result) rethrows -> Result {
        try enabledOnThread.withValue(true, body)
    }
}

/// Runs `body` without recording operations on the autograd tape.
public func withNoGrad<Result>(_ body: () throws -> Result) rethrows -> Result {
    try GradMode.withNoGrad(body)
}
