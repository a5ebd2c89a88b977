import ConvoyComm
import ConvoyNN
import ConvoyTensor
import Foundation

/// Data parallelism (PyTorch DDP / InfiniTrain): every rank of `group` holds a full replica, computes the
/// gradient of its slice of the global batch, and the gradients are averaged across ranks during backward.
///
/// DDP is the bucket engine's stage 0: the same ``ParamAndGradBuffer`` ZeRO shards, all-reduced where ZeRO
/// reduce-scatters (Megatron's bucket groups choose the collective per stage the same way).
/// - At construction the replicas are made identical by broadcasting every parameter from rank 0, and every
///   gradient becomes a view into the buffer's contiguous gradient buffer (buckets in backward order, a small
///   first bucket), so backward accumulates straight into the buckets and nothing is copied.
/// - Each parameter's post-accumulate-grad hook marks it ready; a bucket group whose buckets are all complete is
///   all-reduced (average) asynchronously while backward goes on (`overlapGradReduce`). Groups are always
///   launched in group order, with or without bucketing: readiness order can differ between ranks, and
///   collectives issued in different orders would reduce one gradient into another of the same shape.
/// - `fuseAllReduce` on (auto: with more than one rank) reduces each bucket group with one collective; off,
///   with one collective per parameter (PaddlePaddle's unfused all-reduce), over the same buffer.
/// - Without bucketing every parameter is its own bucket.
/// - ``withoutSynchronization(_:)`` skips communication for the micro-steps of gradient accumulation before
///   the last one; ``finishGradientSynchronization()`` (before the optimizer step) handles parameters that
///   received no gradient and waits for every reduction.
/// - A buffer whose gradient dtype is bf16 (`gradientReduceDType`) rounds each bucket group to bf16 into a staging copy, all-reduces that (half the
///   bytes; the reduction itself adds in fp32 and rounds once) and widens the result back into the fp32
///   gradient buffer, which backward keeps accumulating in fp32.
/// - Parameters not replicated along dp (``ConvoyTensor/Tensor/placement``) are skipped; a parameter shared by
///   two modules is listed (and reduced) once, because ``ConvoyNN/Module/namedParameters()`` lists it once.
public final class DataParallel {
    public let group: any ProcessGroup
    public let options: DataParallelOptions
    /// The parameters reduced, with their names, in registration order.
    public let parameters: [(name: String, parameter: Parameter)]
    /// The layout: buckets, bucket groups and the contiguous gradient buffer every gradient views.
    public let buffer: ParamAndGradBuffer
    private let groupOfBucket: [Int]
    private var pending: [Int]
    private var ready: Set<ObjectIdentifier> = []
    private var nextGroupToLaunch = 0
    /// Per bucket group, the reductions in flight, when they were launched, and (reducing in bf16) the staged
    /// copies with the gradient-buffer ranges they are widened back into.
    private var inFlight: [(works: [Work], launchedAt: UInt64, staged: [(copy: Tensor, range: Range<Int>)])?]
    private var synchronizing = true
    private var hooks: [(Parameter, HookHandle)] = []
    private let fused: Bool
    private let timeline: Timeline?
    private let worldRank: Int

    /// Wraps `module` for data parallelism over `group` (collective: every rank must call it).
    public init(module: Module, group: any ProcessGroup, options: DataParallelOptions = DataParallelOptions(), timeline: Timeline? = nil) throws {
        self.group = group
        self.options = options
        self.timeline = timeline
        worldRank = group.worldRanks[group.rank]
        guard options.firstBucketCapMB > 0, options.bucketCapMB > 0 else {
            throw ConvoyError.invalidConfiguration("parallel.ddp bucket caps must be positive (first_bucket_cap_mb \(options.firstBucketCapMB), bucket_cap_mb \(options.bucketCapMB))")
        }
        let parameters = try ReplicatedParameters.synchronized(module, over: group)
        self.parameters = parameters
        for (name, parameter) in parameters where parameter.dtype != .float32 {
            throw ConvoyError.invalidConfiguration("parameter \(name) is \(parameter.dtype); data parallelism reduces float32 gradients")
        }
        // Nothing is sharded, so no bucket needs padding (data-parallel size 1 in the layout), and the
        // parameters stay where they are: only gradients live in the buffer.
        buffer = try ParamAndGradBuffer(parameters: parameters, dataParallelSize: 1,
                                        firstBucketCapBytes: Int(options.firstBucketCapMB * 1_048_576),
                                        bucketCapBytes: Int(options.bucketCapMB * 1_048_576), bucketsPerGroup: options.bucketsPerGroup,
                                        gradientDType: options.gradientReduceDType, keepsFullGradients: true, keepsFullParameters: false,
                                        bucketAssignment: options.bucketing ? nil : parameters.indices.reversed().map { [$0] })
        var groupOf = [Int](repeating: 0, count: buffer.buckets.count)
        for (index, members) in buffer.bucketGroups.enumerated() { for bucket in members { groupOf[bucket] = index } }
        groupOfBucket = groupOf
        pending = buffer.buckets.map(\.parameters.count)
        inFlight = Array(repeating: nil, count: buffer.bucketGroups.count)
        fused = options.fuseAllReduce.isEnabled(ranks: group.size)
        for (_, parameter) in parameters {
            let handle = parameter.registerPostAccumulateGradHook { [weak self] parameter in self?.markReady(parameter) }
            hooks.append((parameter, handle))
        }
    }

    deinit {
        for (parameter, handle) in hooks { parameter.removeHook(handle) }
    }

    /// The contiguous gradient buffer every gradient views.
    public var fusedGradients: Tensor? { buffer.gradientBuffer }
    /// Number of buckets.
    public var bucketCount: Int { buffer.buckets.count }
    /// Bytes of each bucket, in launch order.
    public var bucketByteCounts: [Int] { buffer.buckets.map { $0.range.count * buffer.gradientDType.byteSize } }
    /// Parameter names of each bucket, in launch order.
    public var bucketParameterNames: [[String]] { buffer.buckets.map { $0.parameters.map { $0.name ?? "?" } } }

    /// Runs `body` (forward and backward of a micro-step that is not the last of the step) without
    /// communicating: gradients just accumulate locally.
    public func withoutSynchronization<Result>(_ body: () throws -> Result) rethrows -> Result {
        let saved = synchronizing
        synchronizing = false
        defer { synchronizing = saved }
        return try body()
    }

    private func markReady(_ parameter: Parameter) {
        guard synchronizing, let bucket = buffer.bucketIndex(of: parameter) else { return }
        guard ready.insert(ObjectIdentifier(parameter)).inserted else { return }
        pending[bucket] -= 1
        guard options.overlapGradReduce else { return }
        launchReadyGroups()
    }

    /// Launches complete bucket groups, always in group order.
    private func launchReadyGroups() {
        while nextGroupToLaunch < buffer.bucketGroups.count && buffer.bucketGroups[nextGroupToLaunch].allSatisfy({ pending[$0] == 0 }) {
            launch(group: nextGroupToLaunch)
            nextGroupToLaunch += 1
        }
    }

    /// All-reduces (average) group `index` in place: its buckets are consecutive, so one contiguous range of the
    /// gradient buffer; one collective for it, or one per parameter when all-reduce fusion is off.
    private func launch(group index: Int) {
        let members = buffer.bucketGroups[index]
        let gradients = CommunicationBuffer(buffer.gradientBuffer)
        let ranges = fused
            ? [buffer.buckets[members.first!].range.lowerBound..<buffer.buckets[members.last!].range.upperBound]
            : members.flatMap { buffer.buckets[$0].parameterRanges }
        guard buffer.gradientDType == .bfloat16 else {
            inFlight[index] = (ranges.map { self.group.allReduceAsync(gradients.slice($0), operation: .average) }, Timeline.now, [])
            return
        }
        let source = buffer.gradientBuffer.floatPointer
        let staged = ranges.map { range -> (copy: Tensor, range: Range<Int>) in
            let copy = Tensor(uninitializedShape: [range.count], dtype: .bfloat16)
            BFloat16.round(source + range.lowerBound, to: copy.storage.pointer.assumingMemoryBound(to: BFloat16.self), count: range.count)
            return (copy, range)
        }
        inFlight[index] = (staged.map { self.group.allReduceAsync(CommunicationBuffer($0.copy), operation: .average) }, Timeline.now, staged)
    }

    /// For gradients accumulated entirely under ``withoutSynchronization(_:)`` (a pipeline schedule, whose last
    /// backward on a rank need not touch all of the rank's parameters): every parameter holding a gradient is
    /// marked ready, then the step finishes as ``finishGradientSynchronization()`` does.
    public func reduceAccumulatedGradients() throws {
        for (_, parameter) in parameters where parameter.grad != nil {
            guard let bucket = buffer.bucketIndex(of: parameter), ready.insert(ObjectIdentifier(parameter)).inserted else { continue }
            pending[bucket] -= 1
        }
        try finishGradientSynchronization()
    }

    /// Call after the last backward of a step, before clipping and the optimizer step: handles parameters that
    /// received no gradient, launches what is left, and waits for every reduction.
    public func finishGradientSynchronization() throws {
        defer {
            ready.removeAll()
            nextGroupToLaunch = 0
            pending = buffer.buckets.map(\.parameters.count)
            inFlight = Array(repeating: nil, count: buffer.bucketGroups.count)
        }
        let unused = parameters.filter { !ready.contains(ObjectIdentifier($0.parameter)) }
        if let first = unused.first {
            guard options.findUnusedParameters else {
                throw ConvoyError.invalidConfiguration(
                    "parameter '\(first.name)' received no gradient in this step (\(unused.count) unused in all); if some parameters are legitimately unused, turn on find_unused_parameters ([parallel.ddp] find_unused_parameters = true or --find-unused-parameters)")
            }
            for (_, parameter) in unused {
                // Its gradient view holds zeros (or this step's accumulation without a synchronizing backward).
                ready.insert(ObjectIdentifier(parameter))
                pending[buffer.bucketIndex(of: parameter)!] -= 1
            }
        }
        launchReadyGroups()
        for index in buffer.bucketGroups.indices where inFlight[index] == nil { launch(group: index) }
        for (index, entry) in inFlight.enumerated() {
            guard let entry else { continue }
            for work in entry.works { try work.wait() }
            for (copy, range) in entry.staged {
                BFloat16.widen(copy.storage.pointer.assumingMemoryBound(to: BFloat16.self), to: buffer.gradientBuffer.floatPointer + range.lowerBound, count: range.count)
            }
            let bytes = buffer.bucketGroups[index].reduce(0) { $0 + buffer.buckets[$1].range.count } * buffer.gradientDType.byteSize
            timeline?.record("all-reduce bucket group \(index) (\(bytes) B)", category: "allreduce", rank: worldRank, lane: "comm",
                             start: entry.launchedAt, end: entry.works.compactMap(\.completionTime).max() ?? Timeline.now)
        }
        if options.findUnusedParameters { try dropGloballyUnusedGradients(locallyUnused: unused.map(\.parameter)) }
    }

    /// A parameter no rank used this step keeps no gradient (as in one process, where the optimizer then
    /// skips it); one used on some rank keeps the averaged gradient. Which is which needs one small
    /// all-reduce of the ranks' usage, done only with `findUnusedParameters`.
    private func dropGloballyUnusedGradients(locallyUnused: [Parameter]) throws {
        let usage = Tensor.zeros([parameters.count])
        let unusedHere = Set(locallyUnused.map(ObjectIdentifier.init))
        for (index, entry) in parameters.enumerated() where !unusedHere.contains(ObjectIdentifier(entry.parameter)) {
            usage.floatPointer[index] = 1
        }
        try group.allReduce(usage, operation: .max)
        for (index, entry) in parameters.enumerated() where usage.floatPointer[index] == 0 {
            // The view is dropped only until zeroGradients() puts it back.
            entry.parameter.grad = nil
        }
    }

    /// Zeroes the gradients, keeping them views into the buffer.
    public func zeroGradients() {
        buffer.zeroGradients()
    }
}
