import ConvoyComm
import ConvoyNN
import ConvoyParallel
import ConvoyTensor
import Foundation
import Testing

/// max |a − b| / max(max |b|, 1e-6).
func relativeDifference(_ a: [Float], _ b: [Float]) -> Float {
    precondition(a.count == b.count, "\(a.count) vs \(b.count) elements")
    let scale = max(b.map(abs).max() ?? 0, 1e-6)
    return zip(a, b).map { abs($0 - $1) }.max().map { $0 / scale } ?? 0
}

/// Rank `rank`'s piece of `whole` along `dim` cut into `blocks` equal blocks, piece `rank` of each in order (the
/// layout of GPT's fused [Q|K|V] under tensor parallelism; one block is a plain shard).
func blockedPiece(_ whole: Tensor, dim: Int, blocks: Int, rank: Int, ranks: Int) -> Tensor {
    let block = whole.shape[dim] / blocks, slice = block / ranks
    let parts = (0..<blocks).map { b in whole.detached().slice(axis: dim, b * block + rank * slice..<b * block + (rank + 1) * slice) }
    return withNoGrad { Tensor.concatenate(parts, axis: dim).contiguous().copy() }
}

/// What rank `rank` holds of `whole` placed as `placement` (a Partial is the whole on rank 0, zeros elsewhere).
func localPiece(_ whole: Tensor, _ placement: Placement, blocks: Int, rank: Int, ranks: Int) -> Tensor {
    switch placement {
    case .replicate: return whole.detached().contiguous().copy()
    case .partial: return rank == 0 ? whole.detached().contiguous().copy() : Tensor.zeros(whole.shape)
    case .shard(let dim): return blockedPiece(whole, dim: dim, blocks: blocks, rank: rank, ranks: ranks)
    }
}

@Suite(.serialized) struct PlacementTests {
    /// Each redistribution, forward and backward, against the whole tensor: the output is the target's piece,
    /// and each rank's gradient is what the whole gradient says its local value contributed to.
    @Test(arguments: [(Placement.partial, Placement.replicate), (.shard(dim: 1), .replicate), (.partial, .shard(dim: 1)),
                      (.replicate, .shard(dim: 0)), (.replicate, .replicate), (.shard(dim: 0), .replicate)])
    func redistributionMatchesDenseMath(source: Placement, target: Placement) throws {
        for ranks in [2, 4] {
            for arriving in [Redistribution.ArrivingGradient.whole, .partial] where arriving == .whole || target == .replicate {
                let whole = Tensor.randomNormal([4, 8, 3], seed: 5)
                let upstream = Tensor.randomNormal([4, 8, 3], seed: 6)
                let results = try LocalWorld.run(size: ranks, threadsPerRank: 1) { group -> (Float, Float) in
                    let leaf = localPiece(whole, source, blocks: 1, rank: group.rank, ranks: ranks)
                    leaf.requiresGrad = true
                    if source != .replicate { leaf.placement.axes["tp"] = source }
                    let moved = try DistributedTensor(local: leaf, group: group).redistributed(to: target, arriving: arriving)
                    #expect(moved.placement == target)
                    let forward = relativeDifference(moved.local.toArray(), localPiece(whole, target, blocks: 1, rank: group.rank, ranks: ranks).toArray())
                    // The gradient arriving at this rank: its piece of the whole upstream gradient, or (partial) a
                    // summand: the whole on rank 0 and zeros elsewhere.
                    let arrivingGradient = arriving == .partial
                        ? localPiece(upstream, .partial, blocks: 1, rank: group.rank, ranks: ranks)
                        : localPiece(upstream, target, blocks: 1, rank: group.rank, ranks: ranks)
                    try (moved.local * arrivingGradient).sum().backward()
                    let expected = localPiece(upstream, source == .partial ? .replicate : source, blocks: 1, rank: group.rank, ranks: ranks)
                    return (forward, relativeDifference(leaf.grad!.toArray(), expected.toArray()))
                }
                for (rank, result) in results.enumerated() {
                    #expect(result.0 <= 1e-6, "\(source) → \(target) at tp \(ranks): rank \(rank) forward differs by \(result.0)")
                    #expect(result.1 <= 1e-6, "\(source) → \(target) (\(arriving) gradient) at tp \(ranks): rank \(rank) backward differs by \(result.1)")
                }
            }
        }
    }

    @Test func movesNoRedistributionMakesAreRefused() throws {
        #expect(!DistributedTensor.canMove(from: .shard(dim: 0), to: .shard(dim: 1)))
        #expect(!DistributedTensor.canMove(from: .replicate, to: .partial))
        _ = try LocalWorld.run(size: 2, threadsPerRank: 1) { group in
            let local = Tensor.zeros([2, 2])
            local.placement.axes["tp"] = .shard(dim: 0)
            #expect(throws: ConvoyError.self) { try DistributedTensor(local: local, group: group).redistributed(to: .shard(dim: 1)) }
        }
    }

    /// Runs `op` on `wholes` placed as `placements` across `ranks` ranks under the tensor-parallel engine and
    /// checks the deduced output placement, the output made whole, and each operand's gradient against `op` in one
    /// process (loss Σ output ⊙ C for a fixed random C).
    func checkRule(_ label: String, ranks: Int = 2, wholes: [Tensor], placements: [Placement], blocks: [Int]? = nil, expect output: Placement,
                   validClasses: Int? = nil, sequenceParallel: Bool = false, denseOperands: (([Tensor]) -> [Tensor])? = nil,
                   denseGradient: ((Tensor, Int) -> Tensor)? = nil, _ op: @escaping @Sendable ([Tensor]) -> Tensor) throws {
        let leaves = (denseOperands?(wholes) ?? wholes).map { whole -> Tensor in
            let leaf = whole.detached().contiguous().copy()
            leaf.requiresGrad = true
            return leaf
        }
        let dense = op(leaves)
        let weights = Tensor.randomNormal(dense.shape, seed: 41)
        try (dense * weights).sum().backward()
        let denseValue = dense.toArray()
        let denseGrads = leaves.enumerated().map { denseGradient?($0.element.grad!, $0.offset) ?? $0.element.grad! }
        let blockCounts = blocks ?? placements.map { _ in 1 }
        let results = try LocalWorld.run(size: ranks, threadsPerRank: 1) { group -> (Placement, Float, [Float]) in
            let engine = TensorParallelEngine(group: group, sequenceParallel: sequenceParallel, validClasses: validClasses)
            let locals = zip(wholes, placements).enumerated().map { index, pair -> Tensor in
                let local = localPiece(pair.0, pair.1, blocks: blockCounts[index], rank: group.rank, ranks: ranks)
                local.requiresGrad = true
                if pair.1 != .replicate { local.placement.axes["tp"] = pair.1 }
                return local
            }
            let result = PlacementDeduction.with(engine) { op(locals) }
            try engine.checkFailure()
            let placement = result.placement.along("tp")
            let whole = try DistributedTensor(local: result, group: group).whole()
            try (whole * weights).sum().backward()
            let gradientErrors = locals.enumerated().map { index, local -> Float in
                let expected = localPiece(denseGrads[index], placements[index] == .partial ? .replicate : placements[index], blocks: blockCounts[index], rank: group.rank, ranks: ranks)
                return relativeDifference(local.grad!.toArray(), expected.toArray())
            }
            return (placement, relativeDifference(whole.toArray(), denseValue), gradientErrors)
        }
        for (rank, result) in results.enumerated() {
            #expect(result.0 == output, "\(label): deduced \(result.0), expected \(output)")
            #expect(result.1 <= 1e-5, "\(label): rank \(rank) output differs by \(result.1)")
            for (index, error) in result.2.enumerated() { #expect(error <= 1e-5, "\(label): rank \(rank) gradient of operand \(index) differs by \(error)") }
        }
    }

    @Test func linearAndMatmulRules() throws {
        let x = Tensor.randomNormal([2, 4, 8], seed: 1), w = Tensor.randomNormal([8, 12], seed: 2), b = Tensor.randomNormal([12], seed: 3)
        try checkRule("column-parallel linear", wholes: [x, w, b], placements: [.replicate, .shard(dim: 1), .shard(dim: 0)], expect: .shard(dim: 2)) {
            Tensor.linear($0[0], weight: $0[1], bias: $0[2])
        }
        let xr = Tensor.randomNormal([2, 4, 12], seed: 4), wr = Tensor.randomNormal([12, 8], seed: 5), br = Tensor.randomNormal([8], seed: 6)
        try checkRule("row-parallel linear (bias after the all-reduce)", ranks: 4, wholes: [xr, wr, br], placements: [.shard(dim: 2), .shard(dim: 0), .replicate], expect: .replicate) {
            Tensor.linear($0[0], weight: $0[1], bias: $0[2])
        }
        try checkRule("row-parallel linear under sequence parallelism", wholes: [xr, wr, br], placements: [.shard(dim: 2), .shard(dim: 0), .replicate], expect: .shard(dim: 1), sequenceParallel: true) {
            Tensor.linear($0[0], weight: $0[1], bias: $0[2])
        }
        try checkRule("column-parallel linear gathering a sequence shard", wholes: [x, w, b], placements: [.shard(dim: 1), .shard(dim: 1), .shard(dim: 0)], expect: .shard(dim: 2), sequenceParallel: true) {
            Tensor.linear($0[0], weight: $0[1], bias: $0[2])
        }
        try checkRule("matmul (R, S(1))", wholes: [x, w], placements: [.replicate, .shard(dim: 1)], expect: .shard(dim: 2)) { $0[0].matmul($0[1]) }
        try checkRule("matmul (S(last), S(0)) → Partial", wholes: [xr, wr], placements: [.shard(dim: 2), .shard(dim: 0)], expect: .partial) { $0[0].matmul($0[1]) }
    }

    @Test func elementwiseNormAndActivationRules() throws {
        let a = Tensor.randomNormal([2, 4, 8], seed: 7), b = Tensor.randomNormal([2, 4, 8], seed: 8), row = Tensor.randomNormal([8], seed: 9)
        let positions = Tensor.randomNormal([4, 8], seed: 10)
        try checkRule("add (S(1), S(1))", wholes: [a, b], placements: [.shard(dim: 1), .shard(dim: 1)], expect: .shard(dim: 1)) { $0[0] + $0[1] }
        try checkRule("add (S(1), R broadcast)", wholes: [a, row], placements: [.shard(dim: 1), .replicate], expect: .shard(dim: 1)) { $0[0] + $0[1] }
        try checkRule("add (P, P)", wholes: [a, b], placements: [.partial, .partial], expect: .partial) { $0[0] + $0[1] }
        try checkRule("add (P, R) → all-reduce", wholes: [a, positions], placements: [.partial, .replicate], expect: .replicate) { $0[0] + $0[1] }
        try checkRule("add (P, R) under sequence parallelism → reduce-scatter + slice", wholes: [a, positions], placements: [.partial, .replicate], expect: .shard(dim: 1), sequenceParallel: true) { $0[0] + $0[1] }
        let gamma = Tensor.randomNormal([8], seed: 11), beta = Tensor.randomNormal([8], seed: 12)
        try checkRule("layerNorm over an unsharded axis", wholes: [a, gamma, beta], placements: [.shard(dim: 1), .replicate, .replicate], expect: .shard(dim: 1)) {
            Tensor.layerNorm($0[0], weight: $0[1], bias: $0[2])
        }
        try checkRule("layerNorm of a last-axis shard gathers it", wholes: [a, gamma, beta], placements: [.shard(dim: 2), .replicate, .replicate], expect: .replicate) {
            Tensor.layerNorm($0[0], weight: $0[1], bias: $0[2])
        }
        try checkRule("gelu", wholes: [a], placements: [.shard(dim: 2)], expect: .shard(dim: 2)) { $0[0].gelu() }
        let key = DropoutKey(seed: 3, step: 1, layer: 2, site: 3, firstSequence: 4)
        for dim in 0..<3 {
            try checkRule("dropout of Shard(\(dim)) keyed by global position", ranks: 2, wholes: [a], placements: [.shard(dim: dim)], expect: .shard(dim: dim)) {
                Tensor.dropout($0[0], probability: 0.4, key: key)
            }
        }
        try checkRule("permute", wholes: [positions], placements: [.shard(dim: 0)], expect: .shard(dim: 1)) { $0[0].transposed() }
    }

    @Test func attentionEmbeddingAndLossRules() throws {
        let key = DropoutKey(seed: 9, step: 2, layer: 1, site: 2, firstSequence: 0)
        let qkv = Tensor.randomNormal([2, 6, 3 * 16], seed: 13)
        for ranks in [2, 4] {
            try checkRule("attention by head at tp \(ranks)", ranks: ranks, wholes: [qkv], placements: [.shard(dim: 2)], blocks: [3], expect: .shard(dim: 2)) {
                Tensor.causalSelfAttention(qkv: $0[0], heads: 4, dropout: 0.3, key: key)
            }
        }
        try checkRule("attention by sequence", wholes: [qkv], placements: [.shard(dim: 0)], expect: .shard(dim: 0)) {
            Tensor.causalSelfAttention(qkv: $0[0], heads: 4, dropout: 0.3, key: key)
        }
        let table = Tensor.randomNormal([8, 4], seed: 14)
        let ids: [Int32] = [0, 7, 3, 4, 4, 1]
        try checkRule("vocabulary-sharded embedding", ranks: 4, wholes: [table], placements: [.shard(dim: 0)], expect: .partial) {
            Tensor.embedding($0[0], indices: ids, shape: [2, 3])
        }
        // Logits of 7 real classes padded to 8 (a multiple of tp): the padding takes no part in the loss.
        let logits = Tensor.randomNormal([2, 3, 8], std: 3, seed: 15)
        let targets: [Int32] = [6, 0, -1, 3, 5, 2]
        try checkRule("vocab-parallel cross-entropy", ranks: 2, wholes: [logits], placements: [.shard(dim: 2)], expect: .replicate, validClasses: 7,
                      denseOperands: { [$0[0].slice(axis: 2, 0..<7)] },
                      denseGradient: { gradient, _ in withNoGrad { Tensor.concatenate([gradient, Tensor.zeros([2, 3, 1])], axis: 2) } }) { operands in
            Tensor.crossEntropy(logits: operands[0], targets: targets)
        }
    }

    /// Operands no rule accepts, where the parameter may not move, fail at the first forward with the operator,
    /// the module and the placements named.
    @Test func aMismatchNoRuleResolvesNamesOperatorModuleAndPlacements() throws {
        final class Wrapper: Module {
            let norm = LayerNorm(width: 4, initializer: Initializer(seed: 1))
            override var children: [(name: String, module: Module)] { [("norm", norm)] }
        }
        let messages = try LocalWorld.run(size: 2, threadsPerRank: 1) { group -> String in
            let model = Wrapper()
            model.norm.weight.replaceValue(with: Tensor.ones([2]))
            model.norm.weight.placement.axes["tp"] = .shard(dim: 0)
            let engine = TensorParallelEngine(group: group)
            engine.attach(to: model)
            _ = PlacementDeduction.with(engine) { model.norm(Tensor.randomNormal([2, 4], seed: 3)) }
            do {
                try engine.checkFailure()
                return "no error"
            } catch { return "\(error)" }
        }
        for message in messages {
            #expect(message.contains("layerNorm in norm") && message.contains("Replicate, Shard(0), Replicate"), "\(message)")
        }
    }
}
