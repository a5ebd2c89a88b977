import ConvoyTensor

/// One way an operator computes on distributed operands: the placement each operand must have, the placement
/// of the output that follows, and which operands' gradients come back partial (a replicated operand combined
/// with another's shard: each rank's gradient is one summand, so its dual all-reduces it).
public struct PropagationRule: Sendable, Equatable, CustomStringConvertible {
    /// Per operand, in ``ConvoyTensor/OperatorCall/operands`` order.
    public var operands: [Placement]
    /// The output's placement.
    public var output: Placement
    /// Indices of operands whose gradient is partial under this rule.
    public var partialGradients: Set<Int>

    public init(_ operands: [Placement], _ output: Placement, partialGradients: Set<Int> = []) {
        self.operands = operands
        self.output = output
        self.partialGradients = partialGradients
    }

    public var description: String {
        "(\(operands.map(\.description).joined(separator: ", "))) → \(output)"
    }
}
