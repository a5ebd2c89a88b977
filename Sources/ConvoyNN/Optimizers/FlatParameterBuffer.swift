import ConvoyTensor

/// The parameters of one fused group packed into one contiguous Float32 buffer.
///
/// Construction copies every parameter's values into its slice of ``values`` (a tensor of shape [total])
/// and rebinds the parameter to that slice (``Tensor/rebind(to:)``), so the parameter keeps its identity,
/// name, gradient and hooks but now lives inside the buffer; models, optimizers and checkpoints see no
/// difference. Slices follow the order of ``parameters`` with no padding: parameter `i` occupies
/// `offsets[i] ..< offsets[i] + counts[i]`.
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

    /// The packed parameters, in buffer order.
    public let parameters: [Parameter]
    /// Element offset of each parameter's slice in ``values`` (and ``gradients``).
    public let offsets: [Int]
    /// Element count of each parameter.
    public let counts: [Int]
    /// Total number of elements.
    public let totalCount: Int
    /// The flat parameter values, shape [``totalCount``]; every parameter is a view into it.
    public let values: Tensor
    /// The flat gradient buffer (``GradientLayout/flat`` only), shape [``totalCount``].
    public let gradients: Tensor?
    /// How gradients are laid out.
    public let gradientLayout: GradientLayout

    /// Packs `parameters` (distinct Float32 leaf tensors) and rebinds each one to its slice, preserving its
    /// values. With `gradientLayout` ``GradientLayout/flat`` each parameter's gradient also becomes a view into
    /// ``gradients`` (keeping its current value, zero if it had none).
    public init(_ parameters: [Parameter], gradientLayout: GradientLayout = .flat) {
        var seen = Set<ObjectIdentifier>()
        for parameter in parameters {
            precondition(seen.insert(ObjectIdentifier(parameter)).inserted,
                         "parameter \(parameter.name ?? "(unnamed)") appears twice in one flat buffer")
            precondition(parameter.dtype == .float32, "flat parameter buffers hold float32 parameters; \(parameter.name ?? "a parameter") is \(parameter.dtype)")
        }
        self.parameters = parameters
        self.counts = parameters.map(\.count)
        var offsets: [Int] = [], total = 0
        for count in counts {
            offsets.append(total)
            total += count
        }
        self.offsets = offsets
        self.totalCount = total
        self.gradientLayout = gradientLayout
        values = TensorAllocator.withCategory(.parameters) { Tensor.zeros([total]) }
        gradients = gradientLayout == .flat ? TensorAllocator.withCategory(.gradients) { Tensor.zeros([total]) } : nil

        for (index, parameter) in parameters.enumerated() {
            let source = parameter.contiguous()
            withExtendedLifetime(source) {
                (values.floatPointer + offsets[index]).update(from: source.floatPointer, count: counts[index])
            }
            parameter.rebind(to: slice(of: values, index))
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

    /// A view of parameter `index`'s slice of `buffer` (a flat tensor with this buffer's layout).
    public func slice(of buffer: Tensor, _ index: Int) -> Tensor {
        precondition(buffer.rank == 1 && buffer.count == totalCount && buffer.isContiguous, "slice needs a flat buffer of \(totalCount) elements")
        return Tensor(storage: buffer.storage, shape: parameters[index].shape, offset: buffer.offset + offsets[index])
    }

    /// Whether parameter `index` is still a view of its slice of ``values`` (nothing rebound it elsewhere).
    public func parameterIsView(_ index: Int) -> Bool {
        let parameter = parameters[index]
        return parameter.storage === values.storage && parameter.offset == values.offset + offsets[index] && parameter.isContiguous
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

// MARK: - Kernel plumbing shared by the fused optimizers

/// A run of consecutive parameters of a flat buffer whose gradients are also consecutive in memory, so one
/// kernel pass covers it. With flat gradients a whole group is one segment; with external gradients (data
/// parallel buckets) or gradients someone replaced, the group splits into maximal contiguous segments.
struct FlatSegment {
    /// Element offset of the segment in the flat parameter (and state) buffers.
    var start: Int
    var count: Int
    /// The segment's gradient elements, contiguous.
    var gradient: UnsafeMutablePointer<Float>
    /// A per-segment flag the kernel branches on (fused SGD: the momentum buffer starts with this step).
    var fresh: Bool
}

/// The segments one step of a fused group runs over, in buffer order.
struct FlatSegmentPlan {
    var segments: [FlatSegment] = []
    /// Running end of each segment in the concatenation of all segments (for the parallel split).
    var ends: [Int] = []
    /// Parameter indices (in the flat buffer) the step covers: those with a gradient.
    var covered: [Int] = []
    /// Contiguous copies of non-contiguous gradients, alive until the step ends.
    var keepAlive: [Tensor] = []

    var total: Int { ends.last ?? 0 }

    /// One parallel SIMD pass over all segments: `body(start, gradient, count, fresh)` for each piece of a
    /// segment that falls into one thread's share of the concatenated elements.
    func run(minimumChunk: Int = 1 << 14,
             _ body: (_ start: Int, _ gradient: UnsafeMutablePointer<Float>, _ count: Int, _ fresh: Bool) -> Void) {
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
                body(segment.start + local, segment.gradient + local, length, segment.fresh)
                position += length
                s += 1
            }
        }
        withExtendedLifetime(keepAlive) {}
    }
}

extension FlatParameterBuffer {
    /// Plans a step: every parameter with a non-nil gradient, merged into maximal segments where both the
    /// parameter slices and the gradients are adjacent and `fresh(index)` agrees. Parameters without a gradient
    /// are left out, so the kernel never touches their values or state.
    func plan(fresh: (Int) -> Bool) -> FlatSegmentPlan {
        var plan = FlatSegmentPlan()
        for index in parameters.indices {
            let parameter = parameters[index]
            guard let grad = parameter.grad else { continue }
            precondition(parameterIsView(index), "parameter \(parameter.name ?? "#\(index)") is no longer a view into its fused optimizer's flat buffer (it was rebound elsewhere)")
            precondition(grad.shape == parameter.shape, "gradient of \(parameter.name ?? "#\(index)") has shape \(grad.shape), the parameter \(parameter.shape)")
            guard counts[index] > 0 else { plan.covered.append(index); continue }
            let pointer: UnsafeMutablePointer<Float>
            if grad.isContiguous && grad.dtype == .float32 {
                pointer = grad.floatPointer
            } else {
                let copy = grad.converted(to: .float32).contiguous()
                plan.keepAlive.append(copy)
                pointer = copy.floatPointer
            }
            let flag = fresh(index)
            plan.covered.append(index)
            if var last = plan.segments.last, last.start + last.count == offsets[index],
               last.gradient + last.count == pointer, last.fresh == flag {
                last.count += counts[index]
                plan.segments[plan.segments.count - 1] = last
                plan.ends[plan.ends.count - 1] += counts[index]
            } else {
                plan.segments.append(FlatSegment(start: offsets[index], count: counts[index], gradient: pointer, fresh: flag))
                plan.ends.append(plan.total + counts[index])
            }
        }
        return plan
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
