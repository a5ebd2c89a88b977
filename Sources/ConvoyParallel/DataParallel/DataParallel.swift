import ConvoyComm
import ConvoyNN
import ConvoyTensor
import Foundation

/// Data parallelism (PyTorch DDP / InfiniTrain): every rank of `group` holds a full replica, computes the
/// gradient of its slice of the global batch, and the gradients are averaged across ranks during backward.
///
/// - At construction the replicas are made identical by broadcasting every parameter from rank 0.
/// - Each parameter's post-accumulate-grad hook marks it ready; a bucket whose parameters are all ready is
///   all-reduced (average) asynchronously, in bucket order, while backward goes on (`overlapGradReduce`).
///   Without bucketing every parameter is its own bucket, still launched in bucket order.
/// - With `fuseAllReduce`, all gradients live in one contiguous buffer in bucket order and every `.grad` is
///   a view into it, so buckets are slices and nothing is copied; otherwise each bucket copies gradients in
///   and out of its own buffer.
/// - ``withoutSynchronization(_:)`` skips communication for the micro-steps of gradient accumulation before
///   the last one; ``finishGradientSynchronization()`` (before the optimizer step) handles parameters that
///   received no gradient and waits for every reduction.
/// - Parameters not replicated along dp (``ConvoyTensor/Tensor/placement``) are skipped; a parameter shared by two modules
///   is listed (and reduced) once, because ``ConvoyNN/Module/namedParameters()`` lists it once.
public final class DataParallel {
    public let group: any ProcessGroup
    public let options: DataParallelOptions
    /// The parameters reduced, with their names, in registration order.
    public let parameters: [(name: String, parameter: Parameter)]
    let buckets: [GradBucket]
    /// The fused gradient buffer (nil without `fuseAllReduce`).
    public let fusedGradients: Tensor?
    private let bucketOfParameter: [ObjectIdentifier: Int]
    /// Each parameter's gradient view into `fusedGradients` (empty without fusion).
    private let gradientViews: [(Parameter, Tensor)]
    private var ready: Set<ObjectIdentifier> = []
    private var nextBucketToLaunch = 0
    private var synchronizing = true
    private var hooks: [(Parameter, HookHandle)] = []
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

        let sizes = parameters.map { $0.parameter.count * 4 }
        let assignment: [[Int]]
        if options.bucketing {
            assignment = BucketAssignment.assign(byteSizes: sizes, firstBucketCapBytes: Int(options.firstBucketCapMB * 1_048_576),
                                                 bucketCapBytes: Int(options.bucketCapMB * 1_048_576))
        } else {
            assignment = parameters.indices.reversed().map { [$0] }
        }
        let fused = options.fuseAllReduce.isEnabled(ranks: group.size)
        let total = sizes.reduce(0, +) / 4
        let fusedGradients = fused ? TensorAllocator.withCategory(.gradients) { Tensor.zeros([total]) } : nil
        self.fusedGradients = fusedGradients
        var built: [GradBucket] = []
        var start = 0
        var bucketOf: [ObjectIdentifier: Int] = [:]
        var views: [(Parameter, Tensor)] = []
        for (bucketIndex, members) in assignment.enumerated() {
            let memberParameters = members.map { parameters[$0].parameter }
            var offsets: [Int] = []
            var running = 0
            for parameter in memberParameters {
                offsets.append(running)
                running += parameter.count
                bucketOf[ObjectIdentifier(parameter)] = bucketIndex
            }
            let buffer: Tensor
            if let fusedGradients {
                buffer = fusedGradients.slice(axis: 0, start..<(start + running))
                for (parameter, offset) in zip(memberParameters, offsets) {
                    // The gradient is a view: backward accumulates straight into the bucket.
                    let view = fusedGradients.slice(axis: 0, (start + offset)..<(start + offset + parameter.count)).reshaped(parameter.shape)
                    parameter.grad = view
                    views.append((parameter, view))
                }
            } else {
                buffer = TensorAllocator.withCategory(.gradients) { Tensor.zeros([running]) }
            }
            built.append(GradBucket(index: bucketIndex, parameters: memberParameters, buffer: buffer, offsets: offsets, isFusedView: fused))
            start += running
        }
        buckets = built
        bucketOfParameter = bucketOf
        gradientViews = views
        for (_, parameter) in parameters {
            let handle = parameter.registerPostAccumulateGradHook { [weak self] parameter in self?.markReady(parameter) }
            hooks.append((parameter, handle))
        }
    }

    deinit {
        for (parameter, handle) in hooks { parameter.removeHook(handle) }
    }

    /// Number of buckets.
    public var bucketCount: Int { buckets.count }
    /// Bytes of each bucket, in launch order.
    public var bucketByteCounts: [Int] { buckets.map(\.byteCount) }
    /// Parameter names of each bucket, in launch order.
    public var bucketParameterNames: [[String]] { buckets.map { $0.parameters.map { $0.name ?? "?" } } }

    /// Runs `body` (forward and backward of a micro-step that is not the last of the step) without
    /// communicating: gradients just accumulate locally.
    public func withoutSynchronization<Result>(_ body: () throws -> Result) rethrows -> Result {
        let saved = synchronizing
        synchronizing = false
        defer { synchronizing = saved }
        return try body()
    }

    private func markReady(_ parameter: Parameter) {
        guard synchronizing, let bucketIndex = bucketOfParameter[ObjectIdentifier(parameter)] else { return }
        guard ready.insert(ObjectIdentifier(parameter)).inserted else { return }
        let bucket = buckets[bucketIndex]
        bucket.pending -= 1
        guard options.overlapGradReduce else { return }
        launchReadyBuckets()
    }

    /// Launches complete buckets, always in bucket order (with or without bucketing): the order in which
    /// gradients become ready can differ between ranks (rank-dependent usage with find_unused_parameters), and
    /// collectives issued in different orders would reduce one parameter's gradient into another's of the same
    /// shape without any check noticing.
    private func launchReadyBuckets() {
        while nextBucketToLaunch < buckets.count && buckets[nextBucketToLaunch].pending == 0 {
            launch(buckets[nextBucketToLaunch])
            nextBucketToLaunch += 1
        }
    }

    private func launch(_ bucket: GradBucket) {
        bucket.gatherGradients()
        bucket.launchedAt = Timeline.now
        bucket.work = group.allReduceAsync(CommunicationBuffer(bucket.buffer), operation: .average)
    }

    /// For gradients accumulated entirely under ``withoutSynchronization(_:)`` (a pipeline schedule, whose last
    /// backward on a rank need not touch all of the rank's parameters): every parameter holding a gradient is
    /// marked ready, then the step finishes as ``finishGradientSynchronization()`` does.
    public func reduceAccumulatedGradients() throws {
        for (_, parameter) in parameters where parameter.grad != nil {
            guard let bucketIndex = bucketOfParameter[ObjectIdentifier(parameter)], ready.insert(ObjectIdentifier(parameter)).inserted else { continue }
            buckets[bucketIndex].pending -= 1
        }
        try finishGradientSynchronization()
    }

    /// Call after the last backward of a step, before clipping and the optimizer step: handles parameters that
    /// received no gradient, launches what is left, and waits for every reduction.
    public func finishGradientSynchronization() throws {
        defer {
            ready.removeAll()
            nextBucketToLaunch = 0
            for bucket in buckets {
                bucket.pending = bucket.parameters.count
                bucket.work = nil
            }
        }
        let unused = parameters.filter { !ready.contains(ObjectIdentifier($0.parameter)) }
        if let first = unused.first {
            guard options.findUnusedParameters else {
                throw ConvoyError.invalidConfiguration(
                    "parameter '\(first.name)' received no gradient in this step (\(unused.count) unused in all); if some parameters are legitimately unused, turn on find_unused_parameters ([parallel.ddp] find_unused_parameters = true or --find-unused-parameters)")
            }
            for (_, parameter) in unused {
                if parameter.grad == nil { parameter.grad = Tensor.zeros(parameter.shape) }
                ready.insert(ObjectIdentifier(parameter))
                buckets[bucketOfParameter[ObjectIdentifier(parameter)]!].pending -= 1
            }
        }
        launchReadyBuckets()
        for bucket in buckets where bucket.work == nil { launch(bucket) }
        for bucket in buckets {
            try bucket.work!.wait()
            bucket.scatterGradients()
            timeline?.record("all-reduce bucket \(bucket.index) (\(bucket.byteCount) B)", category: "allreduce", rank: worldRank, lane: "comm",
                             start: bucket.launchedAt, end: bucket.work!.completionTime ?? Timeline.now)
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
            // A fused view is dropped only until zeroGradients() puts it back.
            entry.parameter.grad = nil
        }
    }

    /// Zeroes the gradients, keeping fused gradients as views into the buffer.
    public func zeroGradients() {
        if let fusedGradients {
            fusedGradients.fill(0)
            for (parameter, view) in gradientViews { parameter.grad = view }
        } else {
            for (_, parameter) in parameters { parameter.grad = nil }
        }
    }
}
