import ConvoyNN
import ConvoyTensor

/// The parameters of one (parameter dtype, gradient dtype) group laid out in one contiguous parameter buffer
/// and one contiguous gradient buffer of the same layout (Megatron's `ParamAndGradBuffer`), the layout ZeRO
/// shards.
///
/// Layout:
/// - Parameters are taken in reverse registration order, the order backward finishes their gradients, and
///   cut into buckets by ``BucketAssignment`` (a smaller first bucket so the first reduction starts early).
/// - Each bucket is one contiguous range of both buffers; its element count is padded up to a multiple of
///   the data-parallel size `N`, so that it splits into `N` equal shards and a reduce-scatter or all-gather
///   of the bucket needs no ragged sizes. Padding is zero and no parameter ever views it.
/// - Rank `r` owns the same-offset shard of every bucket: elements
///   `start + r·(padded/N) ..< start + (r+1)·(padded/N)` of each. A shard may cut through a parameter, which is
///   why ``ownedSlices(rank:)`` reports element ranges rather than whole parameters.
/// - Consecutive buckets form bucket groups (``bucketGroups``); ``DistributedOptimizer`` reduces (and at
///   stages 1–2 gathers) each group with one collective, sent rank-major (``BucketGroupLayout``).
///
/// Construction copies every parameter's values into its slice of ``parameterBuffer`` and rebinds the
/// parameter to that slice (``ConvoyTensor/Tensor/rebind(to:)``: identity, name and hooks are kept), and
/// gives it a gradient that is a view into ``gradientBuffer`` (holding the gradient it already had, or zero) —
/// through ``ConvoyNN/FlatParameterBuffer``, the one packing of parameters into flat buffers, at the buckets'
/// padded offsets. Backward accumulates into `grad` in place, so after backward the group's gradient is already contiguous
/// in bucket order. A parameter must belong to at most one such buffer (or ``ConvoyNN/FlatParameterBuffer``):
/// rebinding it again moves it out of this one.
public final class ParamAndGradBuffer {
    /// One bucket: a padded, contiguous range of both buffers.
    public struct Bucket: Sendable {
        /// Position in ``ParamAndGradBuffer/buckets`` (the order backward completes them).
        public let index: Int
        /// The bucket's elements in the buffers, padding included (its count is a multiple of the
        /// data-parallel size).
        public let range: Range<Int>
        /// The bucket's parameters, in buffer order (reverse registration order).
        public let parameters: [Parameter]
        /// Each parameter's elements in the buffers; they tile `range` from its start, the padding after them.
        public let parameterRanges: [Range<Int>]

        /// Elements of the bucket that belong to no parameter (at its end).
        public var paddingCount: Int { range.upperBound - (parameterRanges.last?.upperBound ?? range.lowerBound) }
    }

    /// Element type of the parameters' compute copies: what ZeRO all-gathers after each step (and stage 3 before
    /// each use). Float32, or BFloat16 under `--precision bf16`: each rank rounds its fp32 master shard to bf16
    /// and gathers that (half the bytes), and the gathered values are widened into ``parameterBuffer``. The
    /// buffers themselves always hold Float32 (the only kernels are Float32), so a BFloat16 group's parameters
    /// hold bf16-representable values; its fp32 masters live with the distributed optimizer.
    public let parameterDType: DType
    /// Element type the gradients are reduced in (all-reduce at DDP, reduce-scatter at ZeRO): Float32, or
    /// BFloat16 (`--grad-reduce-dtype bf16`: a bf16 staging copy is reduced and widened back). Gradients are
    /// accumulated, clipped and stepped in Float32 either way: ``gradientBuffer`` is Float32.
    public let gradientDType: DType
    /// Ranks the buckets are sharded across; every bucket's padded count is a multiple of it.
    public let dataParallelSize: Int
    /// The parameters with their names, in buffer order (reverse registration order).
    public let parameters: [(name: String, parameter: Parameter)]
    /// Each parameter's elements in the buffers, aligned with ``parameters``.
    public let parameterRanges: [Range<Int>]
    /// The buckets, in buffer order.
    public let buckets: [Bucket]
    /// Bucket indices of each bucket group: consecutive buckets, `bucketsPerGroup` per group (the last may
    /// have fewer). Together they partition ``buckets``.
    public let bucketGroups: [[Int]]
    /// All parameter values, shape [``totalCount``]; every parameter is a view into it.
    public let parameterBuffer: Tensor
    /// All gradients, shape [``totalCount``], same layout; every gradient is a view into it.
    public let gradientBuffer: Tensor
    /// Elements per rank: the sum over buckets of padded count / ``dataParallelSize``.
    public let shardElementCount: Int

    private let indexOfParameter: [ObjectIdentifier: Int]
    private let bucketOfParameter: [Int]

    /// Lays out `parameters` (in registration order, as ``ConvoyNN/Module/namedParameters()`` lists them) and
    /// rebinds them into the new buffers.
    ///
    /// - Parameters:
    ///   - parameters: the group's parameters, all of `parameterDType`, each once.
    ///   - dataParallelSize: ranks the buckets are sharded across (≥ 1).
    ///   - firstBucketCapBytes: cap of the first bucket (> 0), counted in unpadded parameter bytes.
    ///   - bucketCapBytes: cap of the other buckets (> 0); a parameter larger than a cap gets a bucket alone.
    ///   - bucketsPerGroup: consecutive buckets reduced by one collective (≥ 1).
    ///   - parameterDType: element type the parameters' compute copies are gathered in (``parameterDType``).
    ///   - gradientDType: element type the gradients are reduced in (``gradientDType``).
    ///   - keepsFullGradients: allocate the full gradient buffer and make every gradient a view into it (false
    ///     for ZeRO stages that keep only a gradient shard: the buffer is then empty).
    ///   - keepsFullParameters: copy the parameters into ``parameterBuffer`` and rebind them there (false for
    ///     ZeRO stage 3, which keeps parameters as shards and gathers them itself, and for data parallelism,
    ///     which never gathers parameters: the buffer is then empty and the parameters are left as they are).
    ///   - bucketAssignment: the buckets as lists of indices into `parameters`, in buffer order, each parameter
    ///     exactly once — replaces the assignment by caps (ZeRO stage 3 makes one bucket per layer).
    /// - Throws: ``ConvoyTensor/ConvoyError/invalidConfiguration(_:)`` for a size, cap or dtype outside what is
    ///   supported, or a parameter listed twice.
    public init(parameters: [(name: String, parameter: Parameter)], dataParallelSize: Int, firstBucketCapBytes: Int,
                bucketCapBytes: Int, bucketsPerGroup: Int = 1, parameterDType: DType = .float32, gradientDType: DType = .float32, keepsFullGradients: Bool = true,
                keepsFullParameters: Bool = true, bucketAssignment: [[Int]]? = nil) throws {
        guard dataParallelSize >= 1 else {
            throw ConvoyError.invalidConfiguration("the data-parallel size must be at least 1, got \(dataParallelSize)")
        }
        guard firstBucketCapBytes > 0, bucketCapBytes > 0 else {
            throw ConvoyError.invalidConfiguration("bucket caps must be positive (first bucket \(firstBucketCapBytes) B, others \(bucketCapBytes) B)")
        }
        guard bucketsPerGroup >= 1 else {
            throw ConvoyError.invalidConfiguration("buckets per bucket group must be at least 1, got \(bucketsPerGroup)")
        }
        // The pair decides what the collectives move; storage, accumulation and optimizer steps are Float32
        // (the only kernels), so other element types are refused here rather than failing deep inside backward.
        let communicated: Set<DType> = [.float32, .bfloat16]
        guard communicated.contains(parameterDType), communicated.contains(gradientDType) else {
            throw ConvoyError.invalidConfiguration("parameter/gradient buffers gather parameters and reduce gradients in float32 or bfloat16, not \(parameterDType)/\(gradientDType)")
        }
        var seen = Set<ObjectIdentifier>()
        for (name, parameter) in parameters {
            guard parameter.dtype == .float32 else {
                throw ConvoyError.invalidConfiguration("parameter \(name) is \(parameter.dtype); parameter/gradient buffers hold float32 parameters (a bfloat16 compute copy is chosen by the buffer's parameter dtype)")
            }
            guard seen.insert(ObjectIdentifier(parameter)).inserted else {
                throw ConvoyError.invalidConfiguration("parameter \(name) is listed twice; each parameter belongs to one buffer once")
            }
        }
        self.parameterDType = parameterDType
        self.gradientDType = gradientDType
        self.dataParallelSize = dataParallelSize

        if let bucketAssignment {
            let listed = bucketAssignment.flatMap { $0 }
            guard listed.sorted() == Array(parameters.indices), !bucketAssignment.contains(where: \.isEmpty) else {
                throw ConvoyError.invalidConfiguration("an explicit bucket assignment must list every parameter index 0..<\(parameters.count) exactly once in non-empty buckets")
            }
        }
        let assignment = bucketAssignment ?? BucketAssignment.assign(byteSizes: parameters.map { $0.parameter.count * DType.float32.byteSize },
                                                                     firstBucketCapBytes: firstBucketCapBytes, bucketCapBytes: bucketCapBytes)
        // BucketAssignment walks in reverse registration order, so concatenating its buckets gives the
        // buffer order.
        var ordered: [(name: String, parameter: Parameter)] = []
        var ranges: [Range<Int>] = []
        var bucketOf: [Int] = []
        var bucketLayouts: [(range: Range<Int>, members: Range<Int>)] = []
        var cursor = 0
        var shardCount = 0
        for (bucketIndex, members) in assignment.enumerated() {
            let bucketStart = cursor
            let firstMember = ordered.count
            for member in members {
                let entry = parameters[member]
                ordered.append(entry)
                ranges.append(cursor..<(cursor + entry.parameter.count))
                bucketOf.append(bucketIndex)
                cursor += entry.parameter.count
            }
            let used = cursor - bucketStart
            let padded = (used + dataParallelSize - 1) / dataParallelSize * dataParallelSize
            cursor = bucketStart + padded
            shardCount += padded / dataParallelSize
            bucketLayouts.append((bucketStart..<cursor, firstMember..<ordered.count))
        }
        let total = cursor
        self.parameters = ordered
        parameterRanges = ranges
        bucketOfParameter = bucketOf
        shardElementCount = shardCount
        indexOfParameter = Dictionary(uniqueKeysWithValues: ordered.enumerated().map { (ObjectIdentifier($0.element.parameter), $0.offset) })
        buckets = bucketLayouts.enumerated().map { index, layout in
            Bucket(index: index, range: layout.range, parameters: layout.members.map { ordered[$0].parameter },
                   parameterRanges: Array(ranges[layout.members]))
        }
        bucketGroups = stride(from: 0, to: bucketLayouts.count, by: bucketsPerGroup).map {
            Array($0..<min($0 + bucketsPerGroup, bucketLayouts.count))
        }

        // The one flat-buffer packing (ConvoyNN's FlatParameterBuffer) copies and rebinds the parameters and
        // makes the gradients views, at the bucket layout's offsets. Its buffers are zero-filled, so the padding
        // starts (and, never being viewed, stays) zero.
        packing = try FlatParameterBuffer(ordered.map(\.parameter), gradientLayout: keepsFullGradients ? .flat : .external,
                                      placement: keepsFullParameters ? .packed : .inPlace, layout: (ranges.map(\.lowerBound), total))
        // ZeRO-2/3 keep only a shard of the gradients and ZeRO-3 only a shard of the parameters: their full
        // buffers are empty.
        parameterBuffer = packing.values ?? TensorAllocator.withCategory(.parameters) { Tensor(storage: TensorStorage(zeroedDType: .float32, count: 0), shape: [0]) }
        gradientBuffer = packing.gradients ?? TensorAllocator.withCategory(.gradients) { Tensor(storage: TensorStorage(zeroedDType: .float32, count: 0), shape: [0]) }
        self.keepsFullGradients = keepsFullGradients
        self.keepsFullParameters = keepsFullParameters
    }

    /// The packing of the parameters and gradients into ``parameterBuffer`` and ``gradientBuffer``.
    private let packing: FlatParameterBuffer

    /// Whether ``gradientBuffer`` holds full gradients (false for ZeRO stages that keep only a shard).
    public let keepsFullGradients: Bool
    /// Whether ``parameterBuffer`` holds the parameters (false for ZeRO stage 3).
    public let keepsFullParameters: Bool

    /// Elements in the layout, padding included (what each full buffer holds; also defined when a buffer is
    /// kept empty).
    public var totalCount: Int { buckets.last?.range.upperBound ?? 0 }

    /// The buffer range of `parameter`, or nil if it is not in this buffer.
    public func bufferRange(of parameter: Parameter) -> Range<Int>? {
        indexOfParameter[ObjectIdentifier(parameter)].map { parameterRanges[$0] }
    }

    /// The index in ``buckets`` of the bucket holding `parameter`, or nil if it is not in this buffer.
    public func bucketIndex(of parameter: Parameter) -> Int? {
        indexOfParameter[ObjectIdentifier(parameter)].map { bucketOfParameter[$0] }
    }

    /// The elements of bucket `bucket` that rank `rank` owns: the rank's equal, same-offset share of the
    /// padded bucket.
    public func shardRange(of bucket: Int, rank: Int) -> Range<Int> {
        precondition(buckets.indices.contains(bucket), "bucket \(bucket) does not exist (\(buckets.count) buckets)")
        precondition((0..<dataParallelSize).contains(rank), "rank \(rank) is outside the data-parallel size \(dataParallelSize)")
        let range = buckets[bucket].range
        let shard = range.count / dataParallelSize
        return (range.lowerBound + rank * shard)..<(range.lowerBound + (rank + 1) * shard)
    }

    /// Where each bucket's shard starts when a rank keeps its shards one after another (a gradient or parameter
    /// shard of ``shardElementCount`` elements), in bucket order.
    public var shardOffsets: [Int] {
        var offsets: [Int] = []
        var running = 0
        for bucket in buckets {
            offsets.append(running)
            running += bucket.range.count / dataParallelSize
        }
        return offsets
    }

    /// The shards rank `rank` owns, one per bucket, in bucket order.
    public func localShardRanges(rank: Int) -> [Range<Int>] {
        buckets.indices.map { shardRange(of: $0, rank: rank) }
    }

    /// The parts of parameters that fall in rank `rank`'s shards (what a distributed optimizer updates there),
    /// in buffer order. `parameterRange` counts elements of the flattened parameter, `bufferRange` the same
    /// elements in the buffers; padding appears in none.
    public func ownedSlices(rank: Int) -> [(parameter: Parameter, parameterRange: Range<Int>, bufferRange: Range<Int>)] {
        var slices: [(parameter: Parameter, parameterRange: Range<Int>, bufferRange: Range<Int>)] = []
        for bucket in buckets {
            let shard = shardRange(of: bucket.index, rank: rank)
            for (parameter, range) in zip(bucket.parameters, bucket.parameterRanges) {
                let lower = max(shard.lowerBound, range.lowerBound), upper = min(shard.upperBound, range.upperBound)
                guard lower < upper else { continue }
                slices.append((parameter, (lower - range.lowerBound)..<(upper - range.lowerBound), lower..<upper))
            }
        }
        return slices
    }

    /// Whether parameter `index` (in ``parameters``) still views its slice of ``parameterBuffer`` (or, when the
    /// buffer keeps no parameters, is still where it was found).
    public func parameterIsView(_ index: Int) -> Bool { packing.parameterIsView(index) }

    /// Whether parameter `index`'s gradient is still the view into ``gradientBuffer`` installed here (false
    /// if it was dropped or replaced).
    public func gradientIsView(_ index: Int) -> Bool { packing.gradientIsView(index) }

    /// Zeroes every gradient (the whole buffer, padding included) and makes any gradient that was dropped or
    /// replaced a view into ``gradientBuffer`` again.
    public func zeroGradients() {
        guard keepsFullGradients else { return }
        packing.zeroGradients()
    }
}
