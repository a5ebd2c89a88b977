import ConvoyTensor

/// The propagation rules of every operator GPT uses, along the tensor-parallel axis: for each, which operand
/// placements it accepts and which output placement follows. The deducer takes the first rule the operands fit
/// as they are; otherwise the first rule they can be redistributed to (in the order listed here, which puts
/// the sequence-sharded rules first under sequence parallelism).
///
/// | operator | rules |
/// |---|---|
/// | linear (x, W [in,out], b) | column (R, S(1), S(0)) → S(last), x's gradient partial; row (S(last), S(0), R) → Partial before the bias, which is then added by `add`; (R, R, R) → R |
/// | matmul (a, b [k,n]) | (R, S(1)) → S(last), a's gradient partial; (S(last), S(0)) → Partial; (R, R) → R |
/// | add (broadcasting) | (R, R) → R; (S(d), S(d)) → S(d) on aligned axes; (S(d), R) → S(d) where the R operand is broadcast along d (its gradient partial); (P, P) → P |
/// | layerNorm (x, w, b) | (R, R, R) → R; (S(d), R, R) → S(d) for d not the normalised axis (w, b gradients partial) |
/// | gelu, dropout | (R) → R; (S(d)) → S(d) (dropout keyed by each element's global position) |
/// | causalSelfAttention (qkv) | (R) → R; (S(2)) → S(2) by head (each rank holds [Q|K|V] of its heads); (S(0)) → S(0) by sequence |
/// | embedding (table) | (R) → R; (S(0)) → Partial (rows of other shards give zeros) |
/// | crossEntropy (logits) | (R) → R; (S(last)) → R (vocab-parallel: three all-reduces of per-row scalars) |
/// | permute | (R) → R; (P) → P; (S(d)) → S(d's new position) |
public enum PlacementRules {
    /// The rules of `call`'s operator for its operands' ranks; `sequenceDimension` is the axis sequence
    /// parallelism shards (nil without it).
    public static func rules(for call: OperatorCall, sequenceDimension: Int?) -> [PropagationRule] {
        let R = Placement.replicate, P = Placement.partial
        func S(_ dim: Int) -> Placement { .shard(dim: dim) }
        var rules: [PropagationRule]
        switch call {
        case .linear(let x, _, let bias):
            let last = x.rank - 1
            let hasBias = bias != nil
            rules = [
                PropagationRule([R, S(1)] + (hasBias ? [S(0)] : []), S(last), partialGradients: [0]),
                PropagationRule([S(last), S(0)] + (hasBias ? [R] : []), P),
                PropagationRule([R, R] + (hasBias ? [R] : []), R),
            ]
        case .matmul(let a, let b):
            guard b.rank == 2 else { return [PropagationRule([R, R], R)] }
            let last = a.rank - 1
            rules = [PropagationRule([R, S(1)], S(last), partialGradients: [0]), PropagationRule([S(last), S(0)], P), PropagationRule([R, R], R)]
        case .add(let a, let b):
            let rank = Swift.max(a.rank, b.rank)
            rules = [PropagationRule([R, R], R)]
            for dim in 0..<rank {
                let aDim = dim - (rank - a.rank), bDim = dim - (rank - b.rank)
                let aHas = aDim >= 0 && a.shape[aDim] != 1, bHas = bDim >= 0 && b.shape[bDim] != 1
                switch (aHas, bHas) {
                case (true, true): rules.append(PropagationRule([S(aDim), S(bDim)], S(dim)))
                case (true, false): rules.append(PropagationRule([S(aDim), R], S(dim), partialGradients: [1]))
                case (false, true): rules.append(PropagationRule([R, S(bDim)], S(dim), partialGradients: [0]))
                case (false, false): break
                }
            }
            rules.append(PropagationRule([P, P], P))
        case .layerNorm(let x, _, _, _):
            rules = [PropagationRule([R, R, R], R)]
            for dim in 0..<Swift.max(x.rank - 1, 0) { rules.append(PropagationRule([S(dim), R, R], S(dim), partialGradients: [1, 2])) }
        case .gelu(let x), .dropout(let x, _, _):
            rules = [PropagationRule([R], R)] + (0..<x.rank).map { PropagationRule([S($0)], S($0)) }
        case .attention:
            rules = [PropagationRule([R], R), PropagationRule([S(2)], S(2)), PropagationRule([S(0)], S(0))]
        case .embedding:
            rules = [PropagationRule([R], R), PropagationRule([S(0)], P)]
        case .crossEntropy(let logits, _):
            rules = [PropagationRule([R], R), PropagationRule([S(logits.rank - 1)], R)]
        case .permute(_, let axes):
            rules = [PropagationRule([R], R), PropagationRule([P], P)]
            for (position, dim) in axes.enumerated() { rules.append(PropagationRule([S(dim)], S(position))) }
        }
        guard let sequenceDimension else { return rules }
        // Sequence parallelism keeps activations sharded along the sequence between the tensor-parallel blocks.
        let sequenceSharded = rules.filter { $0.output == S(sequenceDimension) }
        return sequenceSharded + rules.filter { $0.output != S(sequenceDimension) }
    }
}
