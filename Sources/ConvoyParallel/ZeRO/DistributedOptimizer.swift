import ConvoyComm
import ConvoyNN
import ConvoyTensor
import Foundation

/// ZeRO stages 1, 2 and 3 (a distributed optimizer over a ``ParamAndGradBuffer``).
///
/// Parameters live in a contiguous buffer cut into buckets padded so the data-parallel size divides them; rank
/// r owns the same-offset shard of every bucket. Optimizer state exists only for the rank's shard: the optimizer
/// — built by the caller over views of the shard slices, so its per-element arithmetic is the unsharded
/// optimizer's — updates the shard, and every bucket's parameters are then all-gathered.
///
/// - Stage 1: backward accumulates full gradients in the buffer; after the last backward of a step each
///   bucket is reduce-scattered (average) into the rank's gradient shard.
/// - Stage 2: no full gradient is kept. Each parameter's gradient interceptor copies its gradient into a
///   transient staging buffer of its bucket and takes it over (`.grad` stays nil); a complete bucket is
///   reduce-scattered at once, overlapping the rest of backward, and the result is added to the gradient
///   shard. Between micro-steps only the shard persists; ``finishBackward()`` must follow every backward.
/// - Stage 3: gradients as in stage 2, and the parameters themselves are sharded at rest: the buffer has one
///   bucket per repeated layer (plus one for the rest), each gathered just before the layer's forward and
///   again before its backward, released after use, with the next layer's gather prefetched
///   (``ShardedParameters``). The step updates the shard and gathers nothing; the next forward does.
///   Reading parameters outside a training forward (evaluation, saving) needs ``gatherFullParameters()``.
///
/// Collectives go per bucket group (``DataParallelOptions/bucketsPerGroup`` consecutive buckets, default 1): a
/// group is reduce-scattered once all its buckets are complete, and at stages 1–2 gathered after the step, by
/// one collective each, sent in rank-major order (``BucketGroupLayout``) so every rank still gets exactly its
/// same-offset shards.
///
/// Mixed precision (``DataParallelOptions/parameterDType`` bf16, the buffer's parameter dtype): the optimizer updates an
/// fp32 master shard (stage 3: ``ShardedParameters/shard``; stages 1–2: ``masterShard``, apart from the parameter
/// buffer), each rank rounds it to bf16 and the all-gathers move bf16, widened into the parameters — so every
/// parameter computes with its master rounded to bf16, as under every other layout. Checkpoints save the masters;
/// ``gatherFullParameters()`` gathers the fp32 masters (evaluation, saving, export) until
/// ``releaseFullParameters(copyingBack:)`` rounds them again. With a bf16 gradient dtype
/// (``DataParallelOptions/gradientReduceDType``) each reduce-scatter sends a bf16 copy of the fp32 gradients
/// and the result is widened back into the fp32 gradient shard.
///
/// Per rank with Adam: stage 1 holds 4Ψ parameters + 4Ψ gradients + 8Ψ/N state; stage 2 holds 4Ψ + 12Ψ/N
/// (plus the staging of buckets in flight); stage 3 holds 16Ψ/N at rest (plus the gathered layers in use).
public final class DistributedOptimizer {
    public let group: any ProcessGroup
    /// 1, 2 or 3.
    public let stage: Int
    public let buffer: ParamAndGradBuffer
    /// The optimizer over this rank's shard slices.
    public var optimizer: any Optimizer { shardOptimizer }
    /// Set once, at the end of construction (the slices it updates are built first).
    private var shardOptimizer: (any Optimizer)!
    /// Stage 2: the averaged gradients of this rank's shards, bucket after bucket. Stage 1 keeps them in the
    /// rank's shard regions of the full gradient buffer instead (no extra memory), and this is empty.
    public let gradientShard: Tensor
    /// Where each bucket's shard starts in `gradientShard`.
    private let shardOffsets: [Int]
    private let overlap: Bool
    /// Stage 2: per bucket, the staging buffer of the current backward and the number of gradients missing.
    private var staging: [Tensor?]
    private var pending: [Int]
    /// The bucket groups (``ParamAndGradBuffer/bucketGroups``), each reduced — and at stages 1 and 2 gathered —
    /// by one collective, and the group of each bucket.
    public let groupLayouts: [BucketGroupLayout]
    private let groupOfBucket: [Int]
    /// Stages 2 and 3: per bucket group, the reduce-scatter in flight (its rank-major input kept alive).
    private var incoming: [(work: Work, output: Tensor, input: Tensor)?]
    private var nextGroupToLaunch = 0
    /// Per bucket group, the all-gather launched by the last step and not yet waited for (with
    /// `overlapParamGather`); `output` is the transient rank-major buffer of a group of several buckets.
    private var pendingGathers: [Int: (work: Work, input: Tensor, output: Tensor?)] = [:]
    private var gatherError: Error?
    private let overlapParamGather: Bool
    private var forwardHooks: [(Module, Int)] = []
    /// The optimizer's shard slices: the values (a view), the parameter and its name, the elements of the
    /// flattened parameter they hold.
    private(set) var shardSlices: [(values: Tensor, parameter: Parameter, name: String, range: Range<Int>)] = []
    /// Stage 3: the sharded parameters and their per-layer gathering.
    private let sharded: ShardedParameters?
    /// Stages 1 and 2 with bf16 compute copies: this rank's fp32 master weights, bucket after bucket (the layout
    /// of `gradientShard`), which the optimizer updates and checkpoints save; the parameter buffer then holds the
    /// gathered bf16-rounded copies. Nil otherwise: the optimizer updates the parameter buffer's shard regions.
    private let masterShard: Tensor?
    /// Stages 1 and 2 with a ``masterShard``: whether the parameter buffer holds the fp32 masters
    /// (``gatherFullParameters()``) rather than their bf16 compute copies.
    private var holdsFullPrecisionParameters = false

    /// Wraps `module` (collective: every rank must call it). Parameters are broadcast from rank 0 first, so
    /// replicas start identical. `makeOptimizer` receives the shard slices grouped like
    /// ``ConvoyNN/ParameterGroup/decayingMatrices(of:weightDecay:)`` (slices of matrices decay, others not).
    public init(module: Module, group: any ProcessGroup, stage: Int, options: DataParallelOptions = DataParallelOptions(), weightDecay: Float,
                makeOptimizer: ([ParameterGroup]) throws -> any Optimizer) throws {
        guard (1...3).contains(stage) else {
            throw ConvoyError.invalidConfiguration("zero_stage \(stage) is not a distributed-optimizer stage; use 1, 2 or 3 (0 is plain data parallelism)")
        }
        self.group = group
        self.stage = stage
        overlap = options.overlapGradReduce
        overlapParamGather = options.overlapParamGather
        let parameters = try ReplicatedParameters.synchronized(module, over: group)
        let units = stage == 3 ? ShardedParameters.bucketAssignment(module: module, parameters: parameters) : nil
        buffer = try ParamAndGradBuffer(parameters: parameters, dataParallelSize: group.size,
                                        firstBucketCapBytes: Int(options.firstBucketCapMB * 1_048_576),
                                        bucketCapBytes: Int(options.bucketCapMB * 1_048_576), bucketsPerGroup: options.bucketsPerGroup,
                                        parameterDType: options.parameterDType, gradientDType: options.gradientReduceDType,
                                        keepsFullGradients: stage == 1,
                                        keepsFullParameters: stage < 3, bucketAssignment: units?.buckets)
        let layout = buffer
        sharded = try units.map { try ShardedParameters(buffer: layout, layers: $0.layers, module: module, group: group, reshardAfterForward: options.reshardAfterForward) }
        let shardElements = stage >= 2 ? buffer.shardElementCount : 0
        gradientShard = try TensorAllocator.withCategory(.gradients) { try Tensor.zeros([shardElements], for: "this rank's ZeRO gradient shard") }
        let offsets = buffer.shardOffsets
        shardOffsets = offsets
        staging = Array(repeating: nil, count: buffer.buckets.count)
        pending = buffer.buckets.map(\.parameters.count)
        let buckets = buffer.buckets
        groupLayouts = buffer.bucketGroups.map { members in
            BucketGroupLayout(buckets: members, bucketCounts: members.map { buckets[$0].range.count }, ranks: group.size)
        }
        var groupOf = [Int](repeating: 0, count: buffer.buckets.count)
        for (index, members) in buffer.bucketGroups.enumerated() { for bucket in members { groupOf[bucket] = index } }
        groupOfBucket = groupOf
        incoming = Array(repeating: nil, count: buffer.bucketGroups.count)
        if stage < 3 && buffer.parameterDType == .bfloat16 {
            let masterCount = buffer.shardElementCount
            masterShard = try TensorAllocator.withCategory(.parameters) { try Tensor.zeros([masterCount], for: "this rank's fp32 master-weight shard") }
        } else {
            masterShard = nil
        }
        takeMastersFromParameterBuffer()

        // Views of this rank's slices: values in the parameter buffer (stage 3: the parameter shard), gradients
        // in the gradient shard.
        let names = Dictionary(uniqueKeysWithValues: parameters.map { (ObjectIdentifier($0.parameter), $0.name) })
        var decaying: [Parameter] = [], plain: [Parameter] = []
        var slices: [(Tensor, Parameter, String, Range<Int>)] = []
        for slice in buffer.ownedSlices(rank: group.rank) {
            let bucket = buffer.bucketIndex(of: slice.parameter)!
            let shardStart = buffer.shardRange(of: bucket, rank: group.rank).lowerBound
            let values = (sharded?.shard ?? masterShard).map { Tensor(storage: $0.storage, shape: [slice.bufferRange.count], offset: offsets[bucket] + slice.bufferRange.lowerBound - shardStart) }
                ?? Tensor(storage: buffer.parameterBuffer.storage, shape: [slice.bufferRange.count], offset: buffer.parameterBuffer.offset + slice.bufferRange.lowerBound)
            values.grad = stage >= 2
                ? Tensor(storage: gradientShard.storage, shape: [slice.bufferRange.count], offset: offsets[bucket] + slice.bufferRange.lowerBound - shardStart)
                : Tensor(storage: buffer.gradientBuffer.storage, shape: [slice.bufferRange.count], offset: buffer.gradientBuffer.offset + slice.bufferRange.lowerBound)
            let name = names[ObjectIdentifier(slice.parameter)] ?? "?"
            values.name = "\(name)[\(slice.parameterRange.lowerBound)..<\(slice.parameterRange.upperBound)]"
            if slice.parameter.rank >= 2 { decaying.append(values) } else { plain.append(values) }
            slices.append((values, slice.parameter, name, slice.parameterRange))
        }
        shardSlices = slices
        shardOptimizer = try makeOptimizer([ParameterGroup(decaying, weightDecay: weightDecay), ParameterGroup(plain, weightDecay: 0)])
        if overlapParamGather && stage < 3 {
            // Each layer that owns parameters waits, at the start of its forward, for its buckets' groups only.
            for layer in module.allModules where !layer.localParameters.isEmpty {
                let groups = Set(layer.localParameters.compactMap { buffer.bucketIndex(of: $0.parameter).map { groupOfBucket[$0] } }).sorted()
                let id = layer.registerForwardPreHook { [weak self] _ in self?.waitForGathers(ofGroups: groups) }
                forwardHooks.append((layer, id))
            }
        }
        if stage >= 2 {
            for (_, parameter) in buffer.parameters {
                parameter.setGradientInterceptor { [weak self] parameter, gradient in
                    self?.stage(gradient, of: parameter)
                    return .consumed
                }
            }
        }
    }

    deinit {
        if stage >= 2 { for (_, parameter) in buffer.parameters { parameter.setGradientInterceptor(nil) } }
        for (layer, id) in forwardHooks { layer.removeForwardHook(id) }
    }

    /// Waits for the all-gathers of bucket groups `groups` still in flight and unpacks the rank-major ones.
    private func waitForGathers(ofGroups groups: [Int]) {
        for index in groups {
            guard let pending = pendingGathers.removeValue(forKey: index) else { continue }
            do {
                try pending.work.wait()
                if let output = pending.output { placeGathered(output, group: index) }
            } catch { if gatherError == nil { gatherError = error } }
            withExtendedLifetime(pending) {}
        }
    }

    /// Puts group `index`'s gathered parameters (rank-major; bf16 compute copies are widened) into the parameter buffer.
    private func placeGathered(_ output: Tensor, group index: Int) {
        let layout = groupLayouts[index]
        if layout.isSingleBucket && output.dtype == .bfloat16 {
            let start = buffer.parameterBuffer.floatPointer + buffer.buckets[layout.buckets[0]].range.lowerBound
            BFloat16.widen(output.storage.pointer.assumingMemoryBound(to: BFloat16.self) + output.offset, to: start, count: output.count)
            return
        }
        let values = output.converted(to: .float32)
        layout.unpackRankMajor(values.floatPointer, into: bucketStarts(in: buffer.parameterBuffer, group: index))
        withExtendedLifetime(values) {}
    }

    /// Stages 1 and 2 with a ``masterShard``: copies the parameter buffer's shard regions (fp32 values every rank
    /// holds alike: at construction, after loading, or gathered by ``gatherFullParameters()``) into the master
    /// shard and rounds the whole buffer to the bf16 compute copies — what a bf16 gather would give, with no
    /// communication.
    private func takeMastersFromParameterBuffer() {
        guard let masterShard else { return }
        let parameters = buffer.parameterBuffer
        for bucket in buffer.buckets.indices {
            let range = buffer.shardRange(of: bucket, rank: group.rank)
            (masterShard.floatPointer + shardOffsets[bucket]).update(from: parameters.floatPointer + range.lowerBound, count: range.count)
        }
        BFloat16.roundToFloat(parameters.floatPointer, to: parameters.floatPointer, count: parameters.count)
        holdsFullPrecisionParameters = false
    }

    /// Where each bucket of group `index` starts in `full` (the parameter or the full gradient buffer, which
    /// ``buffer`` owns, so the pointers stay valid).
    private func bucketStarts(in full: Tensor, group index: Int) -> [UnsafeMutablePointer<Float>] {
        groupLayouts[index].buckets.map { full.floatPointer + buffer.buckets[$0].range.lowerBound }
    }

    /// Where an fp32 all-gather of group `index`'s parameters lands: a single bucket straight into its range of the
    /// parameter buffer (`output` nil); several buckets into a transient rank-major `output`, which
    /// ``placeGathered(_:group:)`` puts back into the buckets once the gather is complete.
    private func fullPrecisionGatherDestination(group index: Int) -> (destination: CommunicationBuffer, output: Tensor?) {
        let layout = groupLayouts[index]
        guard layout.isSingleBucket else {
            let output = Tensor(uninitializedShape: [layout.totalCount])
            return (CommunicationBuffer(output), output)
        }
        return (CommunicationBuffer(buffer.parameterBuffer).slice(buffer.buckets[layout.buckets[0]].range), nil)
    }

    /// Parameter all-gathers (one per bucket group) launched by the last step and not yet waited for.
    public var pendingParameterGathers: Int { pendingGathers.count }

    /// Waits for every parameter all-gather still in flight and rethrows a failed one. Stages 1 and 2: the
    /// parameters are then complete; stage 3 needs ``gatherFullParameters()`` for that.
    public func waitForParameters() throws {
        waitForGathers(ofGroups: Array(pendingGathers.keys).sorted())
        if let error = gatherError {
            gatherError = nil
            throw error
        }
        try sharded?.checkFailures()
    }

    /// Makes every parameter complete and readable on every rank (collective): before evaluation, saving,
    /// loading into the model, or any other use outside a training forward. Stage 3 gathers all layers and
    /// keeps them until ``releaseFullParameters(copyingBack:)`` or the next ``step()``.
    public func gatherFullParameters() throws {
        try waitForParameters()
        if let masterShard, !holdsFullPrecisionParameters {
            // The fp32 masters, so evaluation and export read the weights themselves, not their bf16 copies.
            for (index, layout) in groupLayouts.enumerated() {
                let first = shardOffsets[layout.buckets[0]]
                let input = CommunicationBuffer(masterShard).slice(first..<(first + layout.shardCount))
                let (destination, output) = fullPrecisionGatherDestination(group: index)
                try group.allGatherAsync(input: input, output: destination).wait()
                if let output { placeGathered(output, group: index) }
            }
            holdsFullPrecisionParameters = true
        }
        try sharded?.gatherAll()
    }

    /// Called after parameter values were written into ``ConvoyParallel/GradientSynchronizer/residentParameterSlices``
    /// (a loaded checkpoint): stages 1 and 2 with bf16 compute copies take their master shard from the loaded fp32
    /// values and round the parameters again.
    public func parameterValuesLoaded() {
        takeMastersFromParameterBuffer()
    }

    /// Stage 3: releases what ``gatherFullParameters()`` gathered. With `copyingBack`, each rank first takes its
    /// shard from the full parameters — after the same values were written into the model on every rank (e.g.
    /// a loaded checkpoint). Stages 1 and 2 keep full parameters anyway: nothing to do.
    public func releaseFullParameters(copyingBack: Bool = false) {
        if masterShard != nil && (copyingBack || holdsFullPrecisionParameters) { takeMastersFromParameterBuffer() }
        sharded?.releaseAll(copyingBack: copyingBack)
    }

    /// Stage 3: all-gathers launched so far (layers are gathered for forward and again for backward).
    public var parameterGatherCount: Int { sharded?.gatherCount ?? 0 }

    /// Stage 3: parameter bytes gathered right now on this rank (0 at rest).
    public var gatheredParameterBytes: Int { sharded?.gatheredBytes ?? 0 }

    /// Stage 3: the most parameter bytes this rank has had gathered at once (transient, beside the shards).
    public var peakGatheredParameterBytes: Int { sharded?.peakGatheredBytes ?? 0 }

    /// Stages 2 and 3: adds one parameter's gradient of this backward into its bucket's staging buffer; a
    /// complete bucket group is reduce-scattered (in group order, overlapping the rest of backward when
    /// `overlap` is on). Adding rather than copying lets a pipeline stage several backwards (its micro-batches) before one
    /// ``finishBackward()``.
    private func stage(_ gradient: Tensor, of parameter: Parameter) {
        let bucketIndex = buffer.bucketIndex(of: parameter)!
        stagedGradient(of: parameter).addInPlace(gradient.contiguous().reshaped([gradient.count]))
        pending[bucketIndex] -= 1
        if pending[bucketIndex] == 0 { sharded?.gradientsComplete(bucket: bucketIndex) }
        if overlap { launchCompleteGroups() }
    }

    /// Stages 2 and 3: the part of `parameter`'s bucket staging buffer that holds its gradient of the current
    /// backward(s), flat (created, zero, when the bucket has none yet). A pipeline sums a tied weight's staged
    /// gradient across stages here before ``finishBackward()`` reduces it.
    public func stagedGradient(of parameter: Parameter) -> Tensor {
        precondition(stage >= 2, "only ZeRO stages 2 and 3 stage gradients")
        let bucketIndex = buffer.bucketIndex(of: parameter)!
        let bucket = buffer.buckets[bucketIndex]
        let staged = staging[bucketIndex] ?? TensorAllocator.withCategory(.gradients) { Tensor.zeros([bucket.range.count]) }
        staging[bucketIndex] = staged
        let range = buffer.bufferRange(of: parameter)!
        return Tensor(storage: staged.storage, shape: [range.count], offset: staged.offset + range.lowerBound - bucket.range.lowerBound)
    }

    private func launchCompleteGroups() {
        while nextGroupToLaunch < groupLayouts.count && groupLayouts[nextGroupToLaunch].buckets.allSatisfy({ pending[$0] == 0 }) {
            launchStaged(group: nextGroupToLaunch)
            nextGroupToLaunch += 1
        }
    }

    /// One reduce-scatter for the group's staged buckets (rank-major when it has several).
    private func launchStaged(group index: Int) {
        let layout = groupLayouts[index]
        // A bucket none of whose parameters got a gradient this backward contributes zeros.
        let staged = layout.buckets.map { bucket in staging[bucket] ?? Tensor.zeros([buffer.buckets[bucket].range.count]) }
        for bucket in layout.buckets { staging[bucket] = nil }
        let input: Tensor
        if layout.isSingleBucket {
            input = staged[0]
        } else {
            input = TensorAllocator.withCategory(.gradients) { Tensor(uninitializedShape: [layout.totalCount]) }
            // The staged buffers must outlive the copy: their pointers escape the array.
            withExtendedLifetime(staged) { layout.packRankMajor(staged.map { UnsafePointer($0.floatPointer) }, into: input.floatPointer) }
        }
        let sent = input.converted(to: buffer.gradientDType)
        let output = Tensor(uninitializedShape: [layout.shardCount], dtype: buffer.gradientDType)
        let work = group.reduceScatterAsync(input: CommunicationBuffer(sent), output: CommunicationBuffer(output), operation: .average)
        incoming[index] = (work, output, sent)
    }

    /// Stages 2 and 3: call after every backward (each micro-step): launches what is left, waits for every
    /// bucket's reduce-scatter and adds the results to the gradient shard; the staging buffers are released
    /// (stage 3: so are the gathered parameters). Stage 1: nothing to do until ``finishGradientSynchronization()``.
    public func finishBackward() throws {
        try waitForParameters()
        guard stage >= 2 else { return }
        defer { sharded?.releaseUnpinned() }
        defer {
            nextGroupToLaunch = 0
            pending = buffer.buckets.map(\.parameters.count)
            incoming = Array(repeating: nil, count: groupLayouts.count)
        }
        for index in groupLayouts.indices where incoming[index] == nil { launchStaged(group: index) }
        for (index, entry) in incoming.enumerated() {
            guard let entry else { continue }
            try entry.work.wait()
            // The group's shards are consecutive in the gradient shard, in the order the reduce-scatter left them.
            let first = groupLayouts[index].buckets[0]
            Tensor(storage: gradientShard.storage, shape: [entry.output.count], offset: gradientShard.offset + shardOffsets[first]).addInPlace(entry.output.converted(to: .float32))
            withExtendedLifetime(entry.input) {}
        }
    }

    /// Call after the last backward of a step (stage 2: after its ``finishBackward()``): stage 1 reduce-
    /// scatters (averages) every bucket's gradients into this rank's gradient shard.
    public func finishGradientSynchronization() throws {
        try waitForParameters()
        guard stage == 1 else { return }
        let gradients = buffer.gradientBuffer
        // Outputs are transient: the result is copied into the rank's shard region of the gradient buffer, so
        // stage 1 holds no gradient memory beyond the full buffer (and MPI never sees aliased buffers). A group
        // of several buckets is first copied out in rank-major order (transient too).
        // Reducing in bf16, the (rank-major) group is first rounded into a transient bf16 copy.
        let launched = groupLayouts.enumerated().map { index, layout -> (Work, Tensor, Tensor) in
            let output = TensorAllocator.withCategory(.gradients) { Tensor(uninitializedShape: [layout.shardCount], dtype: buffer.gradientDType) }
            let source: Tensor
            if layout.isSingleBucket {
                let range = buffer.buckets[layout.buckets[0]].range
                source = Tensor(storage: gradients.storage, shape: [range.count], offset: gradients.offset + range.lowerBound)
            } else {
                source = TensorAllocator.withCategory(.gradients) { Tensor(uninitializedShape: [layout.totalCount]) }
                layout.packRankMajor(bucketStarts(in: gradients, group: index).map { UnsafePointer($0) }, into: source.floatPointer)
            }
            let sent = TensorAllocator.withCategory(.gradients) { source.converted(to: buffer.gradientDType) }
            return (group.reduceScatterAsync(input: CommunicationBuffer(sent), output: CommunicationBuffer(output), operation: .average), output, sent)
        }
        for (index, (work, output, sent)) in launched.enumerated() {
            try work.wait()
            // Into this rank's shard regions of the gradient buffer (where shardGradient(of:) reads at stage 1).
            let reduced = output.converted(to: .float32)
            withExtendedLifetime(reduced) {
                groupLayouts[index].unpackShards(of: group.rank, from: reduced.floatPointer, into: bucketStarts(in: gradients, group: index))
            }
            withExtendedLifetime(sent) {}
        }
    }

    /// This rank's averaged gradient of bucket `index` (a view: into `gradientShard` at stage 2, into the
    /// gradient buffer's shard region at stage 1).
    private func shardGradient(of index: Int) -> Tensor {
        let count = buffer.buckets[index].range.count / group.size
        if stage >= 2 {
            return Tensor(storage: gradientShard.storage, shape: [count], offset: gradientShard.offset + shardOffsets[index])
        }
        let range = buffer.shardRange(of: index, rank: group.rank)
        return Tensor(storage: buffer.gradientBuffer.storage, shape: [count], offset: buffer.gradientBuffer.offset + range.lowerBound)
    }

    /// Updates this rank's shard and all-gathers the updated parameters: waits for them, or with
    /// `overlapParamGather` leaves them in flight — launched in forward order, each waited for by the first
    /// layer that needs it. Stage 3 gathers nothing here (each forward gathers its layers) apart from, with
    /// `overlapParamGather`, launching the first layers' gathers so they overlap what precedes the next forward.
    public func step() throws {
        try waitForParameters()
        if let sharded {
            sharded.releaseAll()
            optimizer.step()
            if overlapParamGather { sharded.prefetchForward() }
            return
        }
        optimizer.step()
        let parameters = buffer.parameterBuffer
        holdsFullPrecisionParameters = false
        for (index, layout) in groupLayouts.enumerated().reversed() {
            if let masterShard {
                // Each rank rounds its updated master shard of the group (its shards, bucket after bucket, are
                // consecutive there) and the gather moves bf16, widened into the parameters when waited for.
                let first = shardOffsets[layout.buckets[0]]
                let staged = Tensor(storage: masterShard.storage, shape: [layout.shardCount], offset: first).converted(to: .bfloat16)
                let output = Tensor(uninitializedShape: [layout.totalCount], dtype: .bfloat16)
                pendingGathers[index] = (group.allGatherAsync(input: CommunicationBuffer(staged), output: CommunicationBuffer(output)), staged, output)
                continue
            }
            // The all-gather's input (the rank's shards of the group, bucket after bucket) is copied out first:
            // MPI forbids aliasing input and output buffers. A group of several buckets arrives rank-major in
            // a transient buffer and is put back into the buckets when waited for.
            let staged = Tensor(uninitializedShape: [layout.shardCount])
            layout.packShards(of: group.rank, from: bucketStarts(in: parameters, group: index).map { UnsafePointer($0) }, into: staged.floatPointer)
            let (destination, output) = fullPrecisionGatherDestination(group: index)
            pendingGathers[index] = (group.allGatherAsync(input: CommunicationBuffer(staged), output: destination), staged, output)
        }
        if !overlapParamGather { try waitForParameters() }
    }

    /// Zeroes the full gradients (keeping them views into the buffer) and the gradient shard.
    public func zeroGradients() {
        buffer.zeroGradients()
        gradientShard.fill(0)
    }

    /// The L2 norm of the averaged gradient over all ranks' shards (padding is zero and adds nothing).
    public func globalGradientNorm() throws -> Double {
        try squaredGradientNorm().squareRoot()
    }

    /// The squared L2 norm of the averaged gradient over all ranks' shards.
    public func squaredGradientNorm() throws -> Double {
        let squares = Tensor(shape: [1], values: [Float(squaredShardNorm { _ in true })])
        try group.allReduce(squares, operation: .sum)
        return Double(squares.floatPointer[0])
    }

    /// Σ g² over this rank's gradient shard, of the parameters `counts` accepts (every bucket's shard, padding
    /// included — it is zero — when it accepts them all).
    func squaredShardNorm(counting counts: (Parameter) -> Bool) -> Double {
        var local = 0.0
        let excluded = Set(buffer.parameters.map(\.parameter).filter { !counts($0) }.map(ObjectIdentifier.init))
        if excluded.isEmpty {
            for index in buffer.buckets.indices { local += GradientClipping.sumOfSquares(shardGradient(of: index)) }
        } else {
            for (values, parameter, _, _) in shardSlices where !excluded.contains(ObjectIdentifier(parameter)) {
                if let gradient = values.grad { local += GradientClipping.sumOfSquares(gradient) }
            }
        }
        return local
    }

    /// Multiplies this rank's averaged gradient shard by `factor`.
    public func scaleGradients(by factor: Float) {
        for index in buffer.buckets.indices { shardGradient(of: index).scaleInPlace(factor) }
    }

    /// Scales the gradient shard so the global norm is at most `maxNorm`; returns the norm before clipping.
    @discardableResult
    public func clipGradients(maxNorm: Float) throws -> Double {
        let norm = try globalGradientNorm()
        let scale = Double(maxNorm) / (norm + 1e-6)
        if scale < 1 { scaleGradients(by: Float(scale)) }
        return norm
    }
}
