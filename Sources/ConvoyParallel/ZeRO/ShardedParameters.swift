import ConvoyComm
import ConvoyNN
import ConvoyTensor

/// ZeRO stage 3's parameters: sharded at rest, gathered one layer at a time just before they are used.
///
/// The layout is a ``ParamAndGradBuffer`` with one bucket per *unit*: each layer of the model's repeated
/// layers (every ``ConvoyNN/LayerSequence``, e.g. GPT's blocks) is a unit, and everything else (embeddings,
/// final norm, the tied head) forms the root unit. At rest a rank holds only ``shard`` — its same-offset
/// share of every bucket — which the optimizer updates. Each bucket also has a full-size storage the unit's
/// parameters view; its memory exists only while the unit is gathered (``ConvoyTensor/TensorStorage/releaseMemory()``).
///
/// Life of a layer unit in one training step:
/// - forward: the unit's pre-hook waits for its all-gather (launching it if nobody prefetched it) and
///   prefetches the next unit's, so that gather overlaps this unit's compute; the post-hook releases the unit
///   again (`reshardAfterForward`; the last unit is kept, backward needs it first) and puts an identity node on
///   the tape at the unit's output;
/// - backward: that identity node runs just before the unit's backward: it waits for the unit's gather
///   (launched again, the values are those of the forward because the shard changes only in the step) and
///   prefetches the previous unit's;
/// - once every gradient of the unit is final (the distributed optimizer reports it), the unit is released.
///
/// Under `--precision bf16` (the buffer's parameter dtype bf16) a training gather moves bf16: each rank rounds
/// its fp32 shard (the master weights) and the gathered copy is widened into the unit's storage, so the layer
/// computes with its masters rounded to bf16. ``gatherAll()`` gathers the fp32 masters themselves, for
/// evaluation, saving and loading.
///
/// The root unit is gathered when the forward starts and released by ``releaseAll()`` after the backward.
/// ``gatherAll()`` pins every parameter in memory (for evaluation, saving and loading) until
/// ``releaseAll(copyingBack:)``.
final class ShardedParameters {
    /// A group of parameters gathered and released together.
    struct Unit {
        let name: String
        /// The unit's bucket in the layout.
        let bucket: Int
        /// The repeated layer this unit is (nil for the root unit).
        let layer: Module?
    }

    private enum UnitState {
        case released
        /// The gather in flight, and where a bf16 gather lands before it is widened into the unit's storage.
        case gathering(Work, received: Tensor?)
        case gathered
    }

    let group: any ProcessGroup
    let buffer: ParamAndGradBuffer
    /// This rank's shard of every bucket, bucket after bucket: the parameters' values at rest.
    let shard: Tensor
    /// Where each bucket's shard starts in ``shard``.
    let shardOffsets: [Int]
    /// Units in forward order; the root unit is last.
    let units: [Unit]
    let reshardAfterForward: Bool
    /// Full-size memory of each bucket, present only while its unit is gathered.
    private let bucketStorage: [TensorStorage]
    private var states: [UnitState]
    /// Whether training gathers move bf16 compute copies (the buffer's parameter dtype) rather than fp32.
    private let gathersBFloat16: Bool
    /// Per unit: whether its gathered values are the fp32 masters (every gather in fp32, or ``gatherAll()``).
    private var holdsMasters: [Bool]
    private var unitOfBucket: [Int]
    private var pinned = false
    private var hooks: [(Module, Int)] = []
    /// The first gather that failed where nothing can throw (forward hooks, releases), rethrown by the next
    /// call that can; backward throws its failures directly.
    private var failure: Error?
    /// How many all-gathers were launched (a test reads it to see that layers are gathered again for backward).
    private(set) var gatherCount = 0
    /// The most parameter bytes gathered at once so far.
    private(set) var peakGatheredBytes = 0

    /// The bucket assignment for ``ParamAndGradBuffer``: one bucket per repeated layer, in reverse forward
    /// order (the order backward finishes them), then one for everything else. `parameters` are in
    /// registration order.
    static func bucketAssignment(module: Module, parameters: [(name: String, parameter: Parameter)]) -> (buckets: [[Int]], layers: [Module?]) {
        let index = Dictionary(uniqueKeysWithValues: parameters.enumerated().map { (ObjectIdentifier($0.element.parameter), $0.offset) })
        var taken = Set<Int>()
        var layerBuckets: [(Module, [Int])] = []
        for case let sequence as LayerSequence in module.allModules {
            for layer in sequence.layers {
                let members = layer.parameters.compactMap { index[ObjectIdentifier($0)] }.filter { taken.insert($0).inserted }
                if !members.isEmpty { layerBuckets.append((layer, members.sorted(by: >))) }
            }
        }
        let rest = parameters.indices.filter { !taken.contains($0) }.sorted(by: >)
        var buckets = layerBuckets.reversed().map(\.1)
        var layers: [Module?] = layerBuckets.reversed().map(\.0)
        if !rest.isEmpty {
            buckets.append(rest)
            layers.append(nil)
        }
        return (buckets, layers)
    }

    /// Moves the (replicated, equal on every rank) parameters of `buffer` into per-bucket storages and keeps
    /// this rank's shard; `layers[b]` is the repeated layer of bucket `b`, nil for the root bucket.
    init(buffer: ParamAndGradBuffer, layers: [Module?], module: Module, group: any ProcessGroup, reshardAfterForward: Bool) throws {
        self.group = group
        self.buffer = buffer
        self.reshardAfterForward = reshardAfterForward
        gathersBFloat16 = buffer.parameterDType == .bfloat16
        let offsets = buffer.shardOffsets
        shardOffsets = offsets
        shard = try TensorAllocator.withCategory(.parameters) { try Tensor.zeros([buffer.shardElementCount], for: "this rank's ZeRO-3 parameter shard") }
        let storages = buffer.buckets.map { bucket in
            TensorAllocator.withCategory(.parameters) { TensorStorage(zeroedDType: .float32, count: bucket.range.count) }
        }
        bucketStorage = storages
        for (index, entry) in buffer.parameters.enumerated() {
            let parameter = entry.parameter
            let bucket = buffer.bucketIndex(of: parameter)!
            let start = buffer.parameterRanges[index].lowerBound - buffer.buckets[bucket].range.lowerBound
            let source = parameter.contiguous()
            withExtendedLifetime(source) {
                (storages[bucket].floats + start).update(from: source.floatPointer, count: parameter.count)
            }
            parameter.rebind(to: Tensor(storage: bucketStorage[bucket], shape: parameter.shape, offset: start))
        }
        for bucket in buffer.buckets.indices {
            let range = buffer.shardRange(of: bucket, rank: group.rank)
            let ownedStart = range.lowerBound - buffer.buckets[bucket].range.lowerBound
            (shard.floatPointer + offsets[bucket]).update(from: bucketStorage[bucket].floats + ownedStart, count: range.count)
        }
        // Forward order: layers from the first to the last, then the root (whose buckets come last).
        let layerUnits = layers.enumerated().compactMap { bucket, layer in layer.map { Unit(name: "layer unit \(bucket)", bucket: bucket, layer: $0) } }.reversed()
        let rootUnits = layers.enumerated().filter { $0.element == nil }.map { Unit(name: "root unit", bucket: $0.offset, layer: nil) }
        units = Array(layerUnits) + rootUnits
        unitOfBucket = Array(repeating: 0, count: buffer.buckets.count)
        for (index, unit) in units.enumerated() { unitOfBucket[unit.bucket] = index }
        states = Array(repeating: .gathered, count: units.count)
        holdsMasters = Array(repeating: true, count: units.count)
        releaseAll()
        installHooks(module: module)
    }

    deinit {
        for (module, id) in hooks { module.removeForwardHook(id) }
    }

    private var layerUnitCount: Int { units.count - (units.last?.layer == nil ? 1 : 0) }
    private var rootUnit: Int? { units.last?.layer == nil ? units.count - 1 : nil }

    private func installHooks(module: Module) {
        // Every layer that owns parameters makes sure its unit is gathered; it is the only hook a unit whose
        // module does not run hooks itself gets, and then the unit simply stays gathered until backward ends.
        var unitOfLayer: [ObjectIdentifier: Int] = [:]
        for (index, unit) in units.enumerated() {
            guard let layer = unit.layer else { continue }
            for inner in layer.allModules { unitOfLayer[ObjectIdentifier(inner)] = index }
        }
        for layer in module.allModules where !layer.localParameters.isEmpty {
            guard let unit = unitOfLayer[ObjectIdentifier(layer)] ?? rootUnit else { continue }
            let id = layer.registerForwardPreHook { [weak self] _ in
                guard let self else { return }
                // The root unit not being gathered yet means a forward is starting: the first layer comes next.
                let starting = !self.isGathered(unit)
                self.ensureGatheredRecordingFailure(unit)
                if starting && unit == self.rootUnit { self.prefetch(0) }
            }
            hooks.append((layer, id))
        }
        for (index, unit) in units.enumerated() {
            guard let layer = unit.layer else { continue }
            let pre = layer.registerForwardPreHook { [weak self] _ in
                self?.ensureGatheredRecordingFailure(index)
                self?.prefetch(index + 1)
            }
            let post = layer.registerForwardPostHook { [weak self] _, output in self?.afterForward(index, output) ?? output }
            hooks.append((layer, pre))
            hooks.append((layer, post))
        }
    }

    private func afterForward(_ unit: Int, _ output: Tensor) -> Tensor {
        let backwardFollows = GradMode.isEnabled && output.requiresGrad
        // Without a backward nothing needs the unit again; with one, the last unit is needed first.
        if !backwardFollows || (reshardAfterForward && unit != layerUnitCount - 1) { release(unit) }
        guard backwardFollows else { return output }
        let passthrough = Tensor(storage: output.storage, shape: output.shape, strides: output.strides, offset: output.offset)
        // The same tensor to the operators that follow: under tensor parallelism its placement (e.g. Shard(sequence))
        // decides how they compute.
        passthrough.placement = output.placement
        return Tensor.record(passthrough, operation: "ZeRO-3 gather of \(units[unit].name) before backward", inputs: [output]) { [weak self] gradient in
            try self?.ensureGathered(unit)
            if unit > 0 { self?.prefetch(unit - 1) }
            return [gradient]
        }
    }

    /// Launches the all-gather of layer unit `unit` if it is released (no-op past the last layer unit: the
    /// root unit is gathered when the forward reaches it).
    func prefetch(_ unit: Int) {
        guard unit < layerUnitCount, case .released = states[unit] else { return }
        launchGather(unit)
    }

    /// Launches `unit`'s all-gather: of the bf16-rounded shard when training in bf16, of the fp32 shard itself
    /// with `masters` (or when training in fp32).
    private func launchGather(_ unit: Int, masters: Bool = false) {
        let bucket = units[unit].bucket
        let storage = bucketStorage[bucket]
        storage.restoreMemory()
        let count = buffer.buckets[bucket].range.count
        let shardPart = Tensor(storage: shard.storage, shape: [count / group.size], offset: shard.offset + shardOffsets[bucket])
        let full = Tensor(storage: storage, shape: [count])
        if gathersBFloat16 && !masters {
            let received = Tensor(uninitializedShape: [count], dtype: .bfloat16)
            states[unit] = .gathering(group.allGatherAsync(input: CommunicationBuffer(shardPart.converted(to: .bfloat16)), output: CommunicationBuffer(received)),
                                      received: received)
        } else {
            states[unit] = .gathering(group.allGatherAsync(input: CommunicationBuffer(shardPart), output: CommunicationBuffer(full)), received: nil)
        }
        holdsMasters[unit] = masters || !gathersBFloat16
        gatherCount += 1
        peakGatheredBytes = max(peakGatheredBytes, gatheredBytes)
    }

    /// Makes `unit`'s parameters present: waits for its gather, launching it first if needed, and throws when
    /// the gather failed (the unit then counts as gathered, with whatever the failed gather left in it).
    func ensureGathered(_ unit: Int) throws {
        if case .released = states[unit] { launchGather(unit) }
        if case .gathering(let work, let received) = states[unit] {
            defer { states[unit] = .gathered }
            try work.wait()
            if let received {
                BFloat16.widen(received.storage.pointer.assumingMemoryBound(to: BFloat16.self), to: bucketStorage[units[unit].bucket].floats, count: received.count)
            }
        }
    }

    /// ``ensureGathered(_:)`` where nothing can throw (forward hooks, releases): a failure is kept for
    /// ``checkFailures()``.
    private func ensureGatheredRecordingFailure(_ unit: Int) {
        do { try ensureGathered(unit) } catch { if failure == nil { failure = error } }
    }

    private func isGathered(_ unit: Int) -> Bool {
        if case .gathered = states[unit] { return true }
        return false
    }

    /// Gives `unit`'s memory back (after waiting for a gather still in flight into it), unless pinned.
    func release(_ unit: Int) {
        guard !pinned else { return }
        if case .gathering = states[unit] { ensureGatheredRecordingFailure(unit) }
        bucketStorage[units[unit].bucket].releaseMemory()
        states[unit] = .released
    }

    /// Called when every gradient in `bucket` is final for this backward: its layer unit is released.
    func gradientsComplete(bucket: Int) {
        let unit = unitOfBucket[bucket]
        if unit != rootUnit { release(unit) }
    }

    /// Releases every unit; with `copyingBack`, each rank first takes its shard from the gathered values
    /// (after they were written, e.g. by loading a checkpoint into the model on every rank).
    func releaseAll(copyingBack: Bool = false) {
        if copyingBack {
            precondition(pinned, "copying parameters back into the shards needs gatherAll() first")
            for bucket in buffer.buckets.indices {
                let range = buffer.shardRange(of: bucket, rank: group.rank)
                let ownedStart = range.lowerBound - buffer.buckets[bucket].range.lowerBound
                (shard.floatPointer + shardOffsets[bucket]).update(from: bucketStorage[bucket].floats + ownedStart, count: range.count)
            }
        }
        pinned = false
        releaseUnpinned()
    }

    /// Releases every unit that is not pinned (after a backward).
    func releaseUnpinned() {
        for unit in units.indices { release(unit) }
    }

    /// Launches the gathers the next forward needs first: the root unit and the first layer.
    func prefetchForward() {
        if let rootUnit, case .released = states[rootUnit] { launchGather(rootUnit) }
        prefetch(0)
    }

    /// Gathers every unit and keeps all of them until ``releaseAll(copyingBack:)`` (collective).
    func gatherAll() throws {
        for unit in units.indices {
            if case .released = states[unit] {
                launchGather(unit, masters: true)
            } else if !holdsMasters[unit] {
                // Gathered (or gathering) as bf16 compute copies for training: the masters replace them.
                ensureGatheredRecordingFailure(unit)
                launchGather(unit, masters: true)
            }
        }
        // Every gather is waited for, even after one failed, so none is left in flight.
        var firstFailure: Error?
        for unit in units.indices {
            do { try ensureGathered(unit) } catch { if firstFailure == nil { firstFailure = error } }
        }
        pinned = true
        if let firstFailure { throw firstFailure }
    }

    /// Whether every parameter is gathered and pinned.
    var isPinned: Bool { pinned }

    /// Rethrows the first gather that failed, since the last call, where it could not be thrown directly.
    func checkFailures() throws {
        if let error = failure {
            failure = nil
            throw error
        }
    }

    /// Parameter bytes gathered right now (released units hold none).
    var gatheredBytes: Int {
        bucketStorage.reduce(0) { $0 + ($1.isReleased ? 0 : $1.count * $1.dtype.byteSize) }
    }
}
