/// A backward pass stopped because one of its steps threw: an operation's backward function (a collective
/// inside backward, such as ZeRO-3's parameter gather, failed or timed out), a gradient interceptor or a
/// post-accumulate-grad hook.
///
/// ``Tensor/backward()`` stops at the first such error and throws it wrapped here, so the caller learns which
/// step failed; ``underlying`` is the original error (e.g. a `CommunicationError` naming the group, the
/// collective and the ranks that did not arrive), kept with its type for code that inspects it.
///
/// What a failed pass leaves behind: leaves whose gradient for this pass was complete before the failure have
/// it accumulated into `grad` (and their hooks ran, up to the one that failed); every other leaf's `grad` is
/// as it was before the call; the tape reachable from the output is released either way, so the pass cannot
/// be resumed. Treat the step's gradients as lost: zero them (or drop the step) before the next backward.
public struct BackwardError: Error, CustomStringConvertible, Sendable {
    /// The step that failed: the operation's name as recorded on the tape ("ZeRO-3 gather before backward"),
    /// or "gradient interceptor of <tensor>" / "post-accumulate-grad hook of <tensor>".
    public let operation: String
    /// The error the step threw.
    public let underlying: any Error

    public init(operation: String, underlying: any Error) {
        self.operation = operation
        self.underlying = underlying
    }

    public var description: String { "backward of \(operation): \(underlying)" }

    /// Runs `body`, wrapping what it throws as the failure of `operation` (an error that already is a
    /// ``BackwardError`` — raised by a nested step — passes through unchanged, so the innermost step is named).
    static func naming<Result>(_ operation: @autoclosure () -> String, _ body: () throws -> Result) throws -> Result {
        do {
            return try body()
        } catch let error as BackwardError {
            throw error
        } catch {
            throw BackwardError(operation: operation(), underlying: error)
        }
    }
}
