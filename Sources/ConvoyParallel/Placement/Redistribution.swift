import ConvoyComm
import ConvoyTensor

/// The moves between placements along one mesh axis (Hetu's split / concatenate / reduce between
/// model-parallel states), each recorded on the autograd tape with its dual as its backward — Megatron's f and g
/// operators are two of them:
///
/// | forward | move | backward (whole gradient arriving) | backward (partial gradient arriving) |
/// |---|---|---|---|
/// | ``allReduce(_:group:arriving:)`` | Partial → Replicate | identity | all-reduce |
/// | ``allGather(_:dim:group:arriving:)`` | Shard(d) → Replicate | this rank's slice | reduce-scatter |
/// | ``reduceScatter(_:dim:group:)`` | Partial → Shard(d) | all-gather | — |
/// | ``slice(_:dim:group:)`` | Replicate → Shard(d) | all-gather | — |
/// | ``partialGradient(_:group:)`` | Replicate → Replicate | — | all-reduce |
///
/// A gradient "arrives partial" when the consumer of the output computes with a piece of another operand (a
/// column-parallel weight): each rank then holds a summand of the gradient. Shards are equal pieces in rank
/// order; a sharded dimension must divide by the group size.
public enum Redistribution {
    /// What the gradient arriving at a redistribution's output is on each rank.
    public enum ArrivingGradient: Sendable, Equatable {
        /// The whole gradient (the same on every rank of the axis).
        case whole
        /// One summand of the gradient per rank.
        case partial
    }

    /// Partial → Replicate: all-reduce (sum).
    public static func allReduce(_ x: Tensor, group: any ProcessGroup, arriving: ArrivingGradient = .whole) throws -> Tensor {
        let result = x.detached().contiguous().copy()
        try reduce(result, group: group)
        return Tensor.record(result, operation: "all-reduce (Partial → Replicate)", inputs: [x]) { gradient in
            guard arriving == .partial else { return [gradient] }
            let summed = gradient.contiguous().copy()
            try reduce(summed, group: group)
            return [summed]
        }
    }

    /// Shard(`dim`) → Replicate: all-gather along `dim`.
    public static func allGather(_ x: Tensor, dim: Int, group: any ProcessGroup, arriving: ArrivingGradient = .whole) throws -> Tensor {
        let axis = normalized(dim, x)
        let result = try gather(x, dim: axis, group: group)
        return Tensor.record(result, operation: "all-gather (Shard(\(axis)) → Replicate)", inputs: [x]) { gradient in
            arriving == .partial ? [try scatter(gradient, dim: axis, group: group)] : [piece(of: gradient, dim: axis, group: group)]
        }
    }

    /// Partial → Shard(`dim`): reduce-scatter along `dim`.
    public static func reduceScatter(_ x: Tensor, dim: Int, group: any ProcessGroup) throws -> Tensor {
        let axis = normalized(dim, x)
        let result = try scatter(x, dim: axis, group: group)
        return Tensor.record(result, operation: "reduce-scatter (Partial → Shard(\(axis)))", inputs: [x]) { gradient in
            [try gather(gradient, dim: axis, group: group)]
        }
    }

    /// Replicate → Shard(`dim`): this rank's slice, no communication.
    public static func slice(_ x: Tensor, dim: Int, group: any ProcessGroup) -> Tensor {
        let axis = normalized(dim, x)
        let result = piece(of: x, dim: axis, group: group)
        return Tensor.record(result, operation: "slice (Replicate → Shard(\(axis)))", inputs: [x]) { gradient in
            [try gather(gradient, dim: axis, group: group)]
        }
    }

    /// Replicate → Replicate for a consumer whose gradient arrives partial: identity forward, all-reduce backward.
    public static func partialGradient(_ x: Tensor, group: any ProcessGroup) -> Tensor {
        let result = x.detached()
        return Tensor.record(result, operation: "identity (gradient all-reduced)", inputs: [x]) { gradient in
            let summed = gradient.contiguous().copy()
            try reduce(summed, group: group)
            return [summed]
        }
    }

    // MARK: The collectives on tensors (not recorded)

    private static func normalized(_ dim: Int, _ x: Tensor) -> Int { dim < 0 ? dim + x.rank : dim }

    /// In place: the sum over the group.
    static func reduce(_ tensor: Tensor, group: any ProcessGroup, operation: ReduceOperation = .sum) throws {
        try withExtendedLifetime(tensor) { try group.allReduce(CommunicationBuffer(tensor), operation: operation) }
    }

    /// The pieces of all ranks concatenated along `dim` (piece r at position r).
    static func gather(_ x: Tensor, dim: Int, group: any ProcessGroup) throws -> Tensor {
        try startGather(x, dim: dim, group: group).finish()
    }

    /// Starts ``gather(_:dim:group:)``: the all-gather runs on the communication thread until `finish()`.
    static func startGather(_ x: Tensor, dim: Int, group: any ProcessGroup) -> PendingCollective {
        let local = x.contiguous()
        let parts = group.size
        let gathered = Tensor(uninitializedShape: [parts * local.count])
        // The work keeps both buffers alive until it completes.
        let work = group.allGatherAsync(input: CommunicationBuffer(local), output: CommunicationBuffer(gathered))
        var shape = x.shape
        shape[dim] *= parts
        return PendingCollective(work: work) {
            let result = Tensor(uninitializedShape: shape)
            let outer = Shape.count(Array(x.shape[..<dim])), inner = local.count / Swift.max(outer, 1)
            let source = gathered.floatPointer, destination = result.floatPointer
            // gathered is [rank][outer][inner]; the result is [outer][rank][inner].
            for o in 0..<outer {
                for r in 0..<parts {
                    (destination + (o * parts + r) * inner).update(from: source + (r * outer + o) * inner, count: inner)
                }
            }
            return result
        }
    }

    /// This rank's piece along `dim` of the sum over the group of `x`.
    static func scatter(_ x: Tensor, dim: Int, group: any ProcessGroup) throws -> Tensor {
        try startScatter(x, dim: dim, group: group).finish()
    }

    /// Starts ``scatter(_:dim:group:)``: the reduce-scatter runs on the communication thread until `finish()`.
    static func startScatter(_ x: Tensor, dim: Int, group: any ProcessGroup) -> PendingCollective {
        let whole = x.contiguous()
        let parts = group.size
        precondition(x.shape[dim] % parts == 0, "reduce-scatter along dim \(dim) of \(x.shape) needs a multiple of \(parts)")
        let outer = Shape.count(Array(x.shape[..<dim])), inner = whole.count / Swift.max(outer * parts, 1)
        // Rearranged to [rank][outer][inner] so that each rank's piece is one contiguous chunk.
        let arranged = Tensor(uninitializedShape: [whole.count])
        let source = whole.floatPointer, destination = arranged.floatPointer
        for o in 0..<outer {
            for r in 0..<parts {
                (destination + (r * outer + o) * inner).update(from: source + (o * parts + r) * inner, count: inner)
            }
        }
        var shape = x.shape
        shape[dim] /= parts
        let result = Tensor(uninitializedShape: shape)
        let work = group.reduceScatterAsync(input: CommunicationBuffer(arranged), output: CommunicationBuffer(result), operation: .sum)
        return PendingCollective(work: work) { result }
    }

    /// A started collective on tensors: ``finish()`` waits for it and returns its result.
    struct PendingCollective {
        let work: Work
        private let result: () -> Tensor

        init(work: Work, result: @escaping () -> Tensor) {
            self.work = work
            self.result = result
        }

        /// Waits for the collective (throwing its failure) and returns the tensor it produced.
        func finish() throws -> Tensor {
            try work.wait()
            return result()
        }
    }

    /// This rank's piece along `dim` (a contiguous copy).
    static func piece(of x: Tensor, dim: Int, group: any ProcessGroup) -> Tensor {
        let parts = group.size
        precondition(x.shape[dim] % parts == 0, "shard along dim \(dim) of \(x.shape) needs a multiple of \(parts)")
        let size = x.shape[dim] / parts
        return withNoGrad { x.detached().slice(axis: dim, group.rank * size..<(group.rank + 1) * size).contiguous().copy() }
    }
}
