/// Runs operators whose operands are distributed tensors (Hetu's state deduction, DTensor's sharding
/// propagation): it deduces the output's placement from the operands', inserts the redistributions (with their
/// duals on the tape) where the operands fit no rule as they are, and computes on the local pieces.
/// ConvoyParallel's tensor-parallel engine implements it; the operators of this module hand themselves over.
public protocol PlacementDeducer: AnyObject {
    /// The local result of `call`, with its ``Tensor/placement`` set.
    func run(_ call: OperatorCall) -> Tensor
}

/// Where operators find the deducer of the current thread (ranks of the Local backend are threads).
public enum PlacementDeduction {
    private static let active = ThreadLocal<(any PlacementDeducer)?> { nil }

    /// Runs `body` with `deducer` handling this thread's operators on distributed tensors.
    public static func with<Result>(_ deducer: (any PlacementDeducer)?, _ body: () throws -> Result) rethrows -> Result {
        try active.withValue(deducer, body)
    }

    /// The deducer's result for `call` when a deducer is active and an operand is not replicated along some
    /// mesh axis; nil otherwise (the operator then computes as usual). The deducer runs with no deducer active,
    /// so its local computations do not come back here.
    @inline(__always)
    public static func dispatch(_ call: @autoclosure () -> OperatorCall) -> Tensor? {
        guard let deducer = active.value else { return nil }
        let made = call()
        guard made.operands.contains(where: \.isDistributed) else { return nil }
        return active.withValue(nil) { deducer.run(made) }
    }

    /// Whether an operator on `operands` would be handed to the deducer: a fused operator with no placement
    /// rules of its own then runs as the composition of operators that have them.
    @inline(__always)
    public static func wouldDispatch(_ operands: [Tensor]) -> Bool {
        active.value != nil && operands.contains(where: \.isDistributed)
    }
}

extension Tensor {
    /// Whether the tensor is a piece of a distributed tensor: sharded or partial along some mesh axis.
    public var isDistributed: Bool { placement.axes.values.contains { $0 != .replicate } }
}
