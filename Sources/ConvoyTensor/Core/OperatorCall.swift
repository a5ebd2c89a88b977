/// One call of an operator whose operands may be distributed tensors: its name, its operands and its
/// attributes, as the operator hands it to the active ``PlacementDeducer``. These are the operators GPT uses;
/// each has propagation rules (ConvoyParallel's `PlacementRules`).
public enum OperatorCall {
    /// y = x·W + b, W stored [in, out].
    case linear(x: Tensor, weight: Tensor, bias: Tensor?)
    /// a·b with `b` of rank 2.
    case matmul(Tensor, Tensor)
    /// a + b with broadcasting.
    case add(Tensor, Tensor)
    /// Layer norm over the last axis.
    case layerNorm(x: Tensor, weight: Tensor, bias: Tensor, epsilon: Float)
    /// GELU (tanh).
    case gelu(Tensor)
    /// Inverted dropout with masks keyed by global element position.
    case dropout(Tensor, probability: Float, key: DropoutKey)
    /// Causal self-attention over a fused [Q|K|V] projection.
    case attention(qkv: Tensor, heads: Int, probability: Float, key: DropoutKey?, recompute: Bool)
    /// Rows of a table.
    case embedding(weight: Tensor, indices: [Int32], shape: [Int])
    /// Mean cross-entropy of logits against targets.
    case crossEntropy(logits: Tensor, targets: [Int32])
    /// An axis permutation (a view).
    case permute(Tensor, axes: [Int])

    /// The operator's name in messages.
    public var name: String {
        switch self {
        case .linear: return "linear"
        case .matmul: return "matmul"
        case .add: return "add"
        case .layerNorm: return "layerNorm"
        case .gelu: return "gelu"
        case .dropout: return "dropout"
        case .attention: return "causalSelfAttention"
        case .embedding: return "embedding"
        case .crossEntropy: return "crossEntropy"
        case .permute: return "permute"
        }
    }

    /// The tensor operands, in the order rules list their placements.
    public var operands: [Tensor] {
        switch self {
        case .linear(let x, let weight, let bias): return [x, weight] + (bias.map { [$0] } ?? [])
        case .matmul(let a, let b), .add(let a, let b): return [a, b]
        case .layerNorm(let x, let weight, let bias, _): return [x, weight, bias]
        case .gelu(let x), .dropout(let x, _, _), .permute(let x, _): return [x]
        case .attention(let qkv, _, _, _, _): return [qkv]
        case .embedding(let weight, _, _): return [weight]
        case .crossEntropy(let logits, _): return [logits]
        }
    }
}
