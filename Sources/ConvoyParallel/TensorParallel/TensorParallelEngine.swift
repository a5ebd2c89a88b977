import ConvoyComm
import ConvoyNN
import ConvoyTensor

/// Placement deduction along the tensor-parallel axis: runs each operator GPT uses on distributed operands by
/// its ``PlacementRules`` — the first rule the operands fit as they are, else the first they can be
/// redistributed to (never moving a parameter, whose placement is its plan's) — then computes on the local
/// pieces and sets the output's placement. Active on a rank's thread through
/// ``ConvoyTensor/PlacementDeduction/with(_:_:)``.
///
/// Nothing in a forward can throw, so a failure (a collective that failed, or operands no rule accepts) is kept
/// and the forward goes on with stand-in values; the first backward node of the tensor-parallel loss, and the
/// runtime after the step's forward and backward, throw it before any gradient is used.
public final class TensorParallelEngine: PlacementDeducer {
    /// The tensor-parallel group (group rank = position along tp).
    public let group: any ProcessGroup
    /// The axis sequence parallelism shards (1 for [batch, time, width] activations), or nil without it.
    public let sequenceDimension: Int?
    /// Classes of the loss that are real (the vocabulary before padding to a multiple of tp).
    public let validClasses: Int?
    /// How much of the column-parallel input-gradient all-reduces overlapped the weight-gradient GEMMs.
    public let overlap = OverlapMeter()
    /// The first failure of a forward, thrown by ``checkFailure()``.
    public private(set) var failure: Error?
    /// The names of the modules whose forward is running, innermost last (for messages).
    private var moduleStack: [String] = []
    /// Tensors whose placement the plan fixed (parameters): never redistributed.
    private var fixed = Set<ObjectIdentifier>()

    public init(group: any ProcessGroup, sequenceParallel: Bool = false, validClasses: Int? = nil) {
        self.group = group
        sequenceDimension = sequenceParallel ? 1 : nil
        self.validClasses = validClasses
    }

    /// Fixes `parameters`' placements and names modules in messages by registering forward hooks on every
    /// module of `model`.
    public func attach(to model: Module) {
        for parameter in model.parameters { fixed.insert(ObjectIdentifier(parameter)) }
        func visit(_ module: Module, name: String) {
            module.registerForwardPreHook { [weak self] _ in self?.moduleStack.append(name) }
            module.registerForwardPostHook { [weak self] _, output in
                self?.moduleStack.removeLast()
                return output
            }
            for (child, submodule) in module.children { visit(submodule, name: name.isEmpty ? child : name + "." + child) }
        }
        visit(model, name: "")
    }

    /// Throws (and clears) the failure a forward kept.
    public func checkFailure() throws {
        if let failure {
            self.failure = nil
            throw failure
        }
    }

    /// The rule `call` runs by for its operands' placements, with the operand moves it needs; throws a
    /// ``ConvoyTensor/ConvoyError/invalidConfiguration(_:)`` naming the operator, the module and the placements
    /// when none fits.
    public func deduce(_ call: OperatorCall) throws -> PropagationRule {
        let operands = call.operands
        let placements = operands.map { $0.placement.along(MeshAxis.tp.rawValue) }
        let rules = PlacementRules.rules(for: call, sequenceDimension: sequenceDimension)
        if let exact = rules.first(where: { $0.operands == placements }) { return exact }
        let reachable = rules.first { rule in
            zip(zip(placements, rule.operands), operands).allSatisfy { pair, operand in
                pair.0 == pair.1 || (!fixed.contains(ObjectIdentifier(operand)) && DistributedTensor.canMove(from: pair.0, to: pair.1))
            }
        }
        if let reachable { return reachable }
        let module = moduleStack.last.map { $0.isEmpty ? "the model" : $0 } ?? "no module"
        throw ConvoyError.invalidConfiguration(
            "\(call.name) in \(module): operands placed (\(placements.map(\.description).joined(separator: ", "))) along tp fit none of its rules \(rules.map(\.description).joined(separator: "; ")), and no redistribution reaches one (parameters keep the placement their plan gave them); change the plan's placements for \(module)")
    }

    public func run(_ call: OperatorCall) -> Tensor {
        do {
            let rule = try deduce(call)
            return try apply(rule, to: call)
        } catch {
            if failure == nil { failure = error }
            // Stand-in: every operand gathered whole, computed as one process would, so the forward can finish.
            return fallback(call)
        }
    }

    private func apply(_ rule: PropagationRule, to call: OperatorCall) throws -> Tensor {
        if case .linear(let x, let weight, let bias) = call, rule.partialGradients == [0] {
            // Megatron's column-parallel linear: one node whose input-gradient reduction overlaps its weight-gradient
            // GEMM; under sequence parallelism it keeps only the sequence shard of its input.
            switch x.placement.along(MeshAxis.tp.rawValue) {
            case .replicate:
                return DistributedTensor.placed(ColumnParallelLinear.apply(x, weight: weight, bias: bias, group: group, meter: overlap),
                                                rule.output, axis: .tp)
            case .shard(let dim) where dim == sequenceDimension:
                let output = try ColumnParallelLinear.applySequenceSharded(x, dim: dim, weight: weight, bias: bias, group: group, meter: overlap)
                return DistributedTensor.placed(output, rule.output, axis: .tp)
            default:
                break
            }
        }
        var moved: [Tensor] = []
        for (index, operand) in call.operands.enumerated() {
            let arriving: Redistribution.ArrivingGradient = rule.partialGradients.contains(index) ? .partial : .whole
            moved.append(try DistributedTensor(local: operand, group: group).redistributed(to: rule.operands[index], arriving: arriving).local)
        }
        let output = try compute(call, operands: moved, rule: rule)
        // A row-parallel linear with a bias returns what `add` deduced for the reduced sum plus the bias.
        if case .linear(_, _, .some) = call, rule.output == .partial { return output }
        return DistributedTensor.placed(output, rule.output, axis: .tp)
    }

    private func compute(_ call: OperatorCall, operands x: [Tensor], rule: PropagationRule) throws -> Tensor {
        let rank = group.rank, size = group.size
        switch call {
        case .linear:
            guard rule.output == .partial else { return Tensor.linear(x[0], weight: x[1], bias: x.count > 2 ? x[2] : nil) }
            // Row-parallel: the bias joins after the partial sums are reduced, as `add` decides.
            let partial = DistributedTensor.placed(Tensor.linear(x[0], weight: x[1], bias: nil), .partial, axis: .tp)
            guard x.count > 2 else { return partial }
            return run(.add(partial, x[2]))
        case .matmul: return x[0].matmul(x[1])
        case .add: return x[0] + x[1]
        case .layerNorm(_, _, _, let epsilon): return Tensor.layerNorm(x[0], weight: x[1], bias: x[2], epsilon: epsilon)
        case .gelu: return x[0].gelu()
        case .dropout(_, let probability, let key):
            guard case .shard(let dim) = rule.output else { return Tensor.dropout(x[0], probability: probability, key: key) }
            var whole = x[0].shape, start = Array(repeating: 0, count: x[0].rank)
            whole[dim] *= size
            start[dim] = rank * x[0].shape[dim]
            return Tensor.dropout(x[0], probability: probability, key: key, piece: PieceLocation(wholeShape: whole, start: start))
        case .attention(_, let heads, let probability, let key, let recompute):
            switch rule.output {
            case .shard(dim: 2):
                let local = heads / size
                return Tensor.causalSelfAttention(qkv: x[0], heads: local, dropout: probability, key: key, recompute: recompute, headOffset: rank * local, totalHeads: heads)
            case .shard(dim: 0):
                var shifted = key
                shifted?.firstSequence += rank * x[0].shape[0]
                return Tensor.causalSelfAttention(qkv: x[0], heads: heads, dropout: probability, key: shifted, recompute: recompute, totalHeads: heads)
            default:
                return Tensor.causalSelfAttention(qkv: x[0], heads: heads, dropout: probability, key: key, recompute: recompute)
            }
        case .embedding(_, let indices, let shape):
            guard rule.output == .partial else { return Tensor.embedding(x[0], indices: indices, shape: shape) }
            return Tensor.embedding(x[0], indices: indices, shape: shape, firstRow: rank * x[0].shape[0])
        case .crossEntropy(_, let targets):
            guard case .shard = rule.operands[0] else { return Tensor.crossEntropy(logits: x[0], targets: targets) }
            let local = x[0].shape.last ?? 1
            return try VocabParallelCrossEntropy.loss(logits: x[0], targets: targets, firstClass: rank * local,
                                                      classes: validClasses ?? local * size, group: group, engine: self)
        case .permute(_, let axes): return x[0].permuted(axes)
        }
    }

    /// The operator on every operand made whole (gathered or reduced), for a forward that has already failed.
    private func fallback(_ call: OperatorCall) -> Tensor {
        let whole = call.operands.map { operand -> Tensor in
            let distributed = DistributedTensor(local: operand, group: group)
            let shape = distributed.wholeShape
            return DistributedTensor.placed((try? distributed.whole()) ?? Tensor.zeros(shape), .replicate, axis: .tp)
        }
        let replicated = PropagationRule(whole.map { _ in Placement.replicate }, .replicate)
        return (try? compute(call, operands: whole, rule: replicated)) ?? Tensor.zeros([])
    }
}
