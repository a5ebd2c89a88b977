import ConvoyTensor

/// The parameters of one fused group laid out for one kernel pass: packed into one contiguous Float32 buffer,
/// or left where they already are.
///
/// With ``Placement/packed`` (the default), construction copies every parameter's values into its slice of
/// ``values`` (a tensor of shape [total]) and rebinds the parameter to that slice (``Tensor/rebind(to:)``), so
/// the parameter keeps its identity, name, gradient and hooks but now lives inside the buffer; models,
/// optimizers and checkpoints see no difference. Slices follow the order of ``parameters`` with no padding:
/// parameter `i` occupies `offsets[i] ..< offsets[i] + counts[i]`.
///
/// With ``Placement/inPlace`` the parameters are already views into a buffer someone else owns and must stay
/// there — ZeRO's shard slices, which its collectives read and write at fixed offsets. Nothing is copied or
/// rebound and ``values`` is nil; a step runs over the maximal runs of parameters that are adjacent in that
/// buffer. The optimizer state (and ``gradients``, if flat) still uses the packed layout of ``offsets``.
///
/// Gradients come in two layouts (``GradientLayout``):
/// - ``GradientLayout/flat``: the buffer also owns ``gradients``, a flat gradient buffer with the same layout,
///   and every parameter's `grad` becomes a view into its slice (an existing gradient is copied in). Backward
///   accumulates into `grad` in place, so after a backward pass the whole group's gradient is contiguous.
/// - ``GradientLayout/external``: someone else owns the gradients (data parallelism makes them views into its
///   bucket buffers); the buffer leaves `grad` alone and consumers read `parameter.grad` per parameter.
///
/// A parameter must belong to at most one flat buffer: rebinding it again moves it out of the first one.
public final class FlatParameterBuffer {
    /// Who owns the gradients of the packed parameters.
    public enum GradientLayout: Sendable, Equatable {
        /// This buffer owns a flat gradient buffer; every `grad` is a view into it.
        case flat
        /// Gradients are managed elsewhere (e.g. views into data-parallel buckets) and read per parameter.
        case external
    }

    /// Where the parameter values live.
    public enum Placement: Sendable, Equatable {
        /// Copied into ``values``; every parameter is rebound to its slice.
        case packed
        /// Left where they are (contiguous Float32 views into a buffer owned elsewhere, which must outlive
        /// this one); ``values`` is nil.
        case inPlace
    }

    /// The packed parameters, in buffer order.
    public let parameters: [Parameter]
    /// Element offset of each parameter's slice in ``values`` (and ``gradients``).
    public let offsets: [Int]
    /// Element count of each parameter.
    public let counts: [Int]
    /// Total number of elements.
    public let totalCount: Int
    /// The flat parameter values, shape [``totalCount``]; every parameter is a view into it. Nil with
    /// ``Placement/inPlace``, where the parameters stay in their own buffer.
    public let values: Tensor?
    /// The flat gradient buffer (``GradientLayout/flat`` only), shape [``totalCount``].
    public let gradients: Tensor?
    /// How gradients are laid out.
    public let gradientLayout: GradientLayout
    /// Where the parameter values live.
    public let placement: Placement
    /// Where a parameter must stay. The storage is held weakly: with ``Placement/inPlace`` it belongs to
    /// someone else, who may move the parameter and free it (ZeRO-3 shards, a packing optimizer), and this
    /// record must not keep that memory alive.
    private struct Home {
        weak var storage: TensorStorage?
        let offset: Int
    }

    /// Where each parameter must stay: its slice of ``values``, or with ``Placement/inPlace`` where it was at
    /// construction.
    private let homes: [Home]

    /// Packs `parameters` (distinct Float32 leaf tensors) and rebinds each one to its slice, preserving its
    /// values — or, with `placement` ``Placement/inPlace``, leaves them where they are (each must then be
    /// contiguous, and no two may overlap). With `gradientLayout` ``GradientLayout/flat`` each parameter's
    /// gradient also becomes a view into ``gradients`` (keeping its current value, zero if it had none).
    ///
    /// `layout` places the slices at given element offsets in buffers of a given total (increasing, not
    /// overlapping; the gaps stay zero and belong to no parameter) — ZeRO's buckets padded to a multiple of the
    /// data-parallel size. Without it the slices follow one another with no gaps. This is the one packing of
    /// parameters and gradients into flat buffers: ``ConvoyParallel/ParamAndGradBuffer`` lays its buckets out
    /// through it.
    public init(_ parameters: [Parameter], gradientLayout: GradientLayout = .flat, placement: Placement = .packed,
                layout: (offsets: [Int], totalCount: Int)? = nil) throws {
        var seen = Set<ObjectIdentifier>()
        for parameter in parameters {
            precondition(seen.insert(ObjectIdentifier(parameter)).inserted,
                         "parameter \(parameter.name ?? "(unnamed)") appears twice in one flat buffer")
            precondition(parameter.dtype == .float32, "flat parameter buffers hold float32 parameters; \(parameter.name ?? "a parameter") is \(parameter.dtype)")
        }
        self.parameters = parameters
        self.counts = parameters.map(\.count)
        var offsets: [Int] = [], total = 0
        if let layout {
            precondition(layout.offsets.count == parameters.count, "a flat-buffer layout needs one offset per parameter")
            var end = 0
            for (offset, count) in zip(layout.offsets, counts) {
                precondition(offset >= end, "flat-buffer slices must be in increasing order and must not overlap (offset \(offset) < \(end))")
                end = offset + count
            }
            precondition(end <= layout.totalCount, "flat-buffer slices end at \(end), beyond the total \(layout.totalCount)")
            offsets = layout.offsets
            total = layout.totalCount
        } else {
            for count in counts {
                offsets.append(total)
                total += count
            }
        }
        self.offsets = offsets
        self.totalCount = total
        self.gradientLayout = gradientLayout
        self.placement = placement
        gradients = gradientLayout == .flat ? try TensorAllocator.withCategory(.gradients) { try Tensor.zeros([total], for: "the flat gradient buffer") } : nil
        switch placement {
        case .packed:
            let values = try TensorAllocator.withCategory(.parameters) { try Tensor.zeros([total], for: "the flat parameter buffer") }
            self.values = values
            homes = offsets.map { Home(storage: values.storage, offset: values.offset + $0) }
        case .inPlace:
            values = nil
            homes = parameters.map { Home(storage: $0.storage, offset: $0.offset) }
            Self.checkInPlace(parameters)
        }

        for (index, parameter) in parameters.enumerated() {
            if let values {
                let source = parameter.contiguous()
                withExtendedLifetime(source) {
                    (values.floatPointer + offsets[index]).update(from: source.floatPointer, count: counts[index])
                }
                parameter.rebind(to: slice(of: values, index))
            }
            if let gradients {
                if let existing = parameter.grad {
                    precondition(existing.shape == parameter.shape, "gradient of \(parameter.name ?? "a parameter") has shape \(existing.shape), the parameter \(parameter.shape)")
                    let contiguousGradient = existing.converted(to: .float32).contiguous()
                    withExtendedLifetime(contiguousGradient) {
                        (gradients.floatPointer + offsets[index]).update(from: contiguousGradient.floatPointer, count: counts[index])
                    }
                }
                parameter.grad = slice(of: gradients, index)
            }
        }
    }

    /// In-place parameters must be contiguous (one kernel run covers each) and disjoint (overlapping ones
    /// would be updated twice).
    private static func checkInPlace(_ parameters: [Parameter]) {
        var extents: [(storage: ObjectIdentifier, range: Range<Int>, name: String)] = []
        for (index, parameter) in parameters.enumerated() {
            let name = parameter.name ?? "#\(index)"
            precondition(parameter.isContiguous, "in-place flat buffers need contiguous parameters; \(name) is a strided view")
            extents.append((ObjectIdentifier(parameter.storage), parameter.offset..<(parameter.offset + parameter.count), name))
        }
        for sameStorage in Dictionary(grouping: extents, by: \.storage).values {
            let ordered = sameStorage.sorted { $0.range.lowerBound < $1.range.lowerBound }
            for (previous, next) in zip(ordered, ordered.dropFirst()) {
                precondition(!previous.range.overlaps(next.range), "parameters \(previous.name) and \(next.name) overlap in memory; an in-place flat buffer would update those elements twice")
            }
        }
    }

    /// A view of parameter `index`'s slice of `buffer` (a flat tensor with this buffer's layout).
    public func slice(of buffer: Tensor, _ index: Int) -> Tensor {
        precondition(buffer.rank == 1 && buffer.count == totalCount && buffer.isContiguous, "slice needs a flat buffer of \(totalCount) elements")
        return Tensor(storage: buffer.storage, shape: parameters[index].shape, offset: buffer.offset + offsets[index])
    }

    /// Whether parameter `index` is still where this buffer put or found it (its slice of ``values``, or its
    /// place at construction with ``Placement/inPlace``): nothing rebound it elsewhere.
    public func parameterIsView(_ index: Int) -> Bool {
        let parameter = parameters[index]
        guard let home = homes[index].storage else { return false }
        return parameter.storage === home && parameter.offset == homes[index].offset && parameter.isContiguous
    }

    /// Whether parameter `index`'s gradient is the view into ``gradients`` this buffer installed (false for
    /// ``GradientLayout/external``, a nil gradient, or a gradient someone replaced).
    public func gradientIsView(_ index: Int) -> Bool {
        guard let gradients, let grad = parameters[index].grad else { return false }
        return grad.storage === gradients.storage && grad.offset == gradients.offset + offsets[index]
            && grad.isContiguous && grad.dtype == .float32
    }

    /// Zeroes the gradients while keeping them views: with ``GradientLayout/flat`` the whole flat buffer is
    /// filled with zeros and any gradient that was dropped or replaced becomes a view again; with
    /// ``GradientLayout/external`` each existing gradient is filled with zeros in place (one that cannot be,
    /// being non-contiguous or not Float32, is dropped instead).
    public func zeroGradients() {
        if let gradients {
            gradients.fill(0)
            for index in parameters.indices where !gradientIsView(index) {
                parameters[index].grad = slice(of: gradients, index)
            }
        } else {
            for parameter in parameters {
                guard let grad = parameter.grad else { continue }
                if grad.isContiguous && grad.dtype == .float32 {
                    grad.fill(0)
                } else {
                    parameter.grad = nil
                }
            }
        }
    }
}

// MARK: - Kernel plumbing shared by every optimizer

/// A run of elements one optimizer kernel pass covers: parameter values, their gradients and up to two
/// optimizer-state buffers (SGD's momentum; Adam's moments), each contiguous. A fused optimizer merges
/// consecutive parameters of a flat buffer whose memory is adjacent into one segment; a per-tensor optimizer
/// gives each parameter a segment of its own (its state lives in tensors of its own).
struct FlatSegment {
    /// The segment's parameter elements.
    var parameter: UnsafeMutablePointer<Float>
    /// The segment's gradient elements.
    var gradient: UnsafeMutablePointer<Float>
    /// The segment's elements of the first and second optimizer-state buffers (nil where the algorithm has none).
    var firstState: UnsafeMutablePointer<Float>?
    var secondState: UnsafeMutablePointer<Float>?
    var count: Int
    /// A per-segment flag the kernel branches on (SGD: the momentum buffer starts with this step).
    var fresh: Bool

    /// Whether `next` continues this segment in every buffer (so one pass may cover both).
    func isContinued(by next: FlatSegment) -> Bool {
        parameter + count == next.parameter && gradient + count == next.gradient && fresh == next.fresh
            && firstState.map { $0 + count } == next.firstState && secondState.map { $0 + count } == next.secondState
    }
}

/// The segments one kernel pass runs over, in order.
struct FlatSegmentPlan {
    var segments: [FlatSegment] = []
    /// Running end of each segment in the concatenation of all segments (for the parallel split).
    var ends: [Int] = []
    /// Contiguous copies of non-contiguous gradients, alive until the step ends.
    var keepAlive: [Tensor] = []

    var total: Int { ends.last ?? 0 }

    /// Adds a segment, merged into the last one when `merging` and the memory of both is adjacent.
    mutating func add(_ segment: FlatSegment, merging: Bool) {
        guard segment.count > 0 else { return }
        if merging, let last = segments.last, last.isContinued(by: segment) {
            segments[segments.count - 1].count += segment.count
            ends[ends.count - 1] += segment.count
        } else {
            segments.append(segment)
            ends.append(total + segment.count)
        }
    }

    /// A contiguous Float32 pointer to `gradient`'s elements (a copy, kept alive by the plan, when it is not).
    mutating func pointer(to gradient: Tensor) -> UnsafeMutablePointer<Float> {
        if gradient.isContiguous && gradient.dtype == .float32 { return gradient.floatPointer }
        let copy = gradient.converted(to: .float32).contiguous()
        keepAlive.append(copy)
        return copy.floatPointer
    }

    /// One parallel SIMD pass over all segments: `body(parameter, gradient, firstState, secondState, count,
    /// fresh)` for each piece of a segment that falls into one thread's share of the concatenated elements.
    /// Every element is updated by the same arithmetic whatever the split, so results do not depend on it.
    func run(minimumChunk: Int = 1 << 14,
             _ body: (_ parameter: UnsafeMutablePointer<Float>, _ gradient: UnsafeMutablePointer<Float>,
                      _ firstState: UnsafeMutablePointer<Float>?, _ secondState: UnsafeMutablePointer<Float>?, _ count: Int, _ fresh: Bool) -> Void) {
        let segments = self.segments, ends = self.ends
        ComputePool.current.parallelFor(total, minimumChunk: minimumChunk) { range in
            // First segment whose end lies beyond the range's start.
            var low = 0, high = ends.count - 1
            while low < high {
                let middle = (low + high) / 2
                if ends[middle] <= range.lowerBound { low = middle + 1 } else { high = middle }
            }
            var position = range.lowerBound, s = low
            while position < range.upperBound {
                let segment = segments[s]
                let segmentBegin = ends[s] - segment.count
                let local = position - segmentBegin
                let length = min(ends[s], range.upperBound) - position
                body(segment.parameter + local, segment.gradient + local, segment.firstState.map { $0 + local },
                     segment.secondState.map { $0 + local }, length, segment.fresh)
                position += length
                s += 1
            }
        }
        withExtendedLifetime(keepAlive) {}
    }
}

extension FlatParameterBuffer {
    /// Plans a step over this buffer's parameters that have a non-nil gradient, with optimizer state in the
    /// flat buffers `firstState`/`secondState` (this buffer's layout), merged into maximal segments where all
    /// memory is adjacent and `fresh(index)` agrees. Parameters without a gradient are left out, so the kernel
    /// never touches their values or state; `covered` lists the ones the plan includes.
    func plan(firstState: Tensor? = nil, secondState: Tensor? = nil, fresh: (Int) -> Bool) -> (plan: FlatSegmentPlan, covered: [Int]) {
        var plan = FlatSegmentPlan()
        var covered: [Int] = []
        let first = firstState?.floatPointer, second = secondState?.floatPointer
        for index in parameters.indices {
            let parameter = parameters[index]
            guard let grad = parameter.grad else { continue }
            precondition(parameterIsView(index), "parameter \(parameter.name ?? "#\(index)") is no longer where its fused optimizer's flat buffer expects it (it was rebound elsewhere)")
            precondition(grad.shape == parameter.shape, "gradient of \(parameter.name ?? "#\(index)") has shape \(grad.shape), the parameter \(parameter.shape)")
            covered.append(index)
            guard counts[index] > 0 else { continue }
            plan.add(FlatSegment(parameter: parameter.floatPointer, gradient: plan.pointer(to: grad), firstState: first.map { $0 + offsets[index] },
                                 secondState: second.map { $0 + offsets[index] }, count: counts[index], fresh: fresh(index)), merging: true)
        }
        withExtendedLifetime((firstState, secondState)) {}
        return (plan, covered)
    }
}

/// One fused group: the parameters of all parameter groups that share `key` (the optimizer's effective
/// hyper-parameters for them), with each parameter's index in the optimizer's ``Optimizer/parameters``.
struct FusedPartition<Key: Hashable> {
    var key: Key
    var parameters: [Parameter]
    var indices: [Int]
}

/// Splits parameter groups into fused groups: parameters are fused together only when their groups' keys are
/// equal; fused groups keep first-appearance order, parameters keep their order. Empty groups vanish.
func fusedPartitions<Key: Hashable>(_ groups: [ParameterGroup], key: (ParameterGroup) -> Key) -> [FusedPartition<Key>] {
    var partitions: [FusedPartition<Key>] = []
    var seen = Set<ObjectIdentifier>()
    var index = 0
    for group in groups {
        let groupKey = key(group)
        for parameter in group.parameters {
            precondition(seen.insert(ObjectIdentifier(parameter)).inserted,
                         "parameter \(parameter.name ?? "#\(index)") is in two parameter groups; a fused optimizer needs each parameter once")
            if let existing = partitions.firstIndex(where: { $0.key == groupKey }) {
                partitions[existing].parameters.append(parameter)
                partitions[existing].indices.append(index)
            } else {
                partitions.append(FusedPartition(key: groupKey, parameters: [parameter], indices: [index]))
            }
            index += 1
        }
    }
    return partitions
}

/// An optimizer's parameter groups fused by effective weight decay — the one hyper-parameter a group may set
/// for the fused optimizers (keyed by bit pattern: 0 and -0 give different signed zeros, so they are different
/// hyper-parameters).
struct FusedGroups {
    /// One flat buffer per fused group, in order of first appearance.
    let buffers: [FlatParameterBuffer]
    /// The weight decay each fused group applies.
    let weightDecays: [Float]
    /// Each fused group's parameters' positions in the optimizer's parameter list (their state names).
    let stateIndices: [[Int]]

    init(_ groups: [ParameterGroup], weightDecay: Float, gradientLayout: FlatParameterBuffer.GradientLayout, placement: FlatParameterBuffer.Placement) throws {
        let partitions = fusedPartitions(groups) { ($0.weightDecay ?? weightDecay).bitPattern }
        buffers = try partitions.map { try FlatParameterBuffer($0.parameters, gradientLayout: gradientLayout, placement: placement) }
        weightDecays = partitions.map { Float(bitPattern: $0.key) }
        stateIndices = partitions.map(\.indices)
    }

    /// The fused group and slot of each position of the optimizer's parameter list (for loading state).
    static func locations(_ stateIndices: [[Int]]) -> [Int: (group: Int, slot: Int)] {
        var location: [Int: (group: Int, slot: Int)] = [:]
        for (groupIndex, indices) in stateIndices.enumerated() {
            for (slot, index) in indices.enumerated() { location[index] = (groupIndex, slot) }
        }
        return location
    }
}
