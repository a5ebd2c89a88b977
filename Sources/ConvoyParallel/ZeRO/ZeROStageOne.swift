import ConvoyComm
import ConvoyNN
import ConvoyTensor

/// ZeRO stage 1 (a distributed optimizer): every rank keeps the full parameters and accumulates full
/// gradients, but optimizer state exists only for the rank's own shard of the parameters.
///
/// Parameters live in a ``ParamAndGradBuffer`` (contiguous, buckets padded so the data-parallel size divides
/// them). After the last backward of a step each bucket's gradients are reduce-scattered (average), so rank r
/// receives the averaged gradient of exactly its same-offset shard of every bucket; the optimizer — built by the
/// caller over views of those shard slices, so its per-element arithmetic is the unsharded optimizer's — updates
/// the shard; then every bucket's parameters are all-gathered so all replicas agree again.
///
/// Optimizer state is therefore 1/N of stage 0's (8Ψ/N bytes for Adam), gradients and parameters stay whole
/// (stages 2 and 3 shard those too). Gradient accumulation needs nothing special: gradients accumulate in the
/// buffer and are reduced once per step.
public final class ZeROStageOne {
    public let group: any ProcessGroup
    public let buffer: ParamAndGradBuffer
    /// The optimizer over this rank's shard slices.
    public private(set) var optimizer: (any Optimizer)!
    /// The averaged gradients of this rank's shards, bucket after bucket.
    public let gradientShard: Tensor
    /// Where each bucket's shard starts in `gradientShard`.
    private let shardOffsets: [Int]

    /// Wraps `module` (collective: every rank must call it). Parameters are broadcast from rank 0 first, so
    /// replicas start identical. `makeOptimizer` receives the shard slices grouped like
    /// ``ConvoyNN/ParameterGroup/decayingMatrices(of:weightDecay:)`` (slices of matrices decay, others not).
    public init(module: Module, group: any ProcessGroup, options: DataParallelOptions = DataParallelOptions(), weightDecay: Float,
                makeOptimizer: ([ParameterGroup]) -> any Optimizer) throws {
        self.group = group
        let parameters = module.namedParameters().filter { !$0.parameter.isDistributed }
        try withNoGrad {
            for (_, parameter) in parameters { try group.broadcast(parameter, root: 0) }
        }
        buffer = try ParamAndGradBuffer(parameters: parameters, dataParallelSize: group.size,
                                        firstBucketCapBytes: Int(options.firstBucketCapMB * 1_048_576),
                                        bucketCapBytes: Int(options.bucketCapMB * 1_048_576))
        gradientShard = Tensor.zeros([buffer.shardElementCount])
        var offsets: [Int] = []
        var running = 0
        for bucket in buffer.buckets {
            offsets.append(running)
            running += bucket.range.count / group.size
        }
        shardOffsets = offsets

        // Views of this rank's slices: values in the parameter buffer, gradients in the gradient shard.
        let names = Dictionary(uniqueKeysWithValues: parameters.map { (ObjectIdentifier($0.parameter), $0.name) })
        var decaying: [Parameter] = [], plain: [Parameter] = []
        for slice in buffer.ownedSlices(rank: group.rank) {
            let bucket = buffer.bucketIndex(of: slice.parameter)!
            let shardStart = buffer.shardRange(of: bucket, rank: group.rank).lowerBound
            let values = Tensor(storage: buffer.parameterBuffer.storage, shape: [slice.bufferRange.count],
                                offset: buffer.parameterBuffer.offset + slice.bufferRange.lowerBound)
            values.grad = Tensor(storage: gradientShard.storage, shape: [slice.bufferRange.count],
                                 offset: offsets[bucket] + slice.bufferRange.lowerBound - shardStart)
            values.name = "\(names[ObjectIdentifier(slice.parameter)] ?? "?")[\(slice.parameterRange.lowerBound)..<\(slice.parameterRange.upperBound)]"
            if slice.parameter.rank >= 2 { decaying.append(values) } else { plain.append(values) }
        }
        optimizer = makeOptimizer([ParameterGroup(decaying, weightDecay: weightDecay), ParameterGroup(plain, weightDecay: 0)])
    }

    /// Call after the last backward of a step: reduce-scatters (averages) every bucket's gradients into this
    /// rank's gradient shard.
    public func finishGradientSynchronization() throws {
        let gradients = buffer.gradientBuffer
        let works = buffer.buckets.enumerated().map { index, bucket in
            group.reduceScatterAsync(input: CommunicationBuffer(gradients).slice(bucket.range),
                                     output: CommunicationBuffer(gradientShard).slice(shardOffsets[index]..<(shardOffsets[index] + bucket.range.count / group.size)),
                                     operation: .average)
        }
        for work in works { try work.wait() }
    }

    /// Updates this rank's shard and all-gathers the updated parameters.
    public func step() throws {
        optimizer.step()
        let parameters = buffer.parameterBuffer
        // The all-gather's input is copied out first: MPI forbids aliasing input and output buffers.
        let staged = buffer.buckets.map { bucket -> Tensor in
            let shard = buffer.shardRange(of: bucket.index, rank: group.rank)
            return parameters.slice(axis: 0, shard).copy()
        }
        let works = zip(buffer.buckets, staged).map { bucket, shard in
            group.allGatherAsync(input: CommunicationBuffer(shard), output: CommunicationBuffer(parameters).slice(bucket.range))
        }
        for work in works { try work.wait() }
        withExtendedLifetime(staged) {}
    }

    /// Zeroes the full gradients (keeping them views into the buffer) and the gradient shard.
    public func zeroGradients() {
        buffer.zeroGradients()
        gradientShard.fill(0)
    }

    /// The L2 norm of the averaged gradient over all ranks' shards (padding is zero and adds nothing).
    public func globalGradientNorm() throws -> Double {
        let squares = Tensor.zeros([1])
        var local = 0.0
        let values = gradientShard.floatPointer
        for i in 0..<gradientShard.count { local += Double(values[i]) * Double(values[i]) }
        squares.floatPointer[0] = Float(local)
        try group.allReduce(squares, operation: .sum)
        return Double(squares.floatPointer[0]).squareRoot()
    }

    /// Scales the gradient shard so the global norm is at most `maxNorm`; returns the norm before clipping.
    @discardableResult
    public func clipGradients(maxNorm: Float) throws -> Double {
        let norm = try globalGradientNorm()
        let scale = Double(maxNorm) / (norm + 1e-6)
        if scale < 1 { gradientShard.scaleInPlace(Float(scale)) }
        return norm
    }
}
