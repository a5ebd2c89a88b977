/// Shape operations. Reshape of a contiguous tensor, transpose, permute, slice and broadcast are views that
/// share storage; the others copy. All are differentiable.
extension Tensor {
    /// A contiguous tensor with the same values: self when already contiguous, else a copy.
    public func contiguous() -> Tensor {
        if isContiguous && dtype == .float32 { return self }
        return copy()
    }

    /// A contiguous Float32 copy that owns its memory (recorded as identity on the tape).
    public func copy() -> Tensor {
        let result: Tensor
        if isContiguous {
            result = Tensor(uninitializedShape: shape, dtype: dtype)
            result.storage.pointer.copyMemory(from: storage.pointer + offset * dtype.byteSize, byteCount: count * dtype.byteSize)
        } else {
            let copied = contiguousStorageCopyIfNeeded()
            result = copied.offset == 0 && copied.count == copied.storage.count ? copied : copied.copy()
        }
        let float = result.converted(to: .float32)
        return Tensor.record(float, operation: "copy", inputs: [self]) { gradient in [gradient] }
    }

    /// The same elements with another shape; one axis may be -1 (inferred). A view when contiguous.
    public func reshaped(_ newShape: [Int]) -> Tensor {
        var resolved = newShape
        if let inferred = newShape.firstIndex(of: -1) {
            let known = newShape.enumerated().filter { $0.offset != inferred }.reduce(1) { $0 * $1.element }
            precondition(known > 0 && count % known == 0, "cannot reshape \(shape) into \(newShape)")
            resolved[inferred] = count / known
        }
        precondition(Shape.count(resolved) == count, "cannot reshape \(shape) (\(count) elements) into \(newShape)")
        let source = isContiguous ? self : contiguous()
        let view = Tensor(storage: source.storage, shape: resolved, offset: source.offset)
        let originalShape = shape
        return Tensor.record(view, operation: "reshape", inputs: [source]) { gradient in
            [gradient.reshaped(originalShape)]
        }
    }

    /// Reorders the axes (a view): result axis i is input axis `axes[i]`.
    public func permuted(_ axes: [Int]) -> Tensor {
        if let placed = PlacementDeduction.dispatch(.permute(self, axes: axes)) { return placed }
        precondition(axes.count == rank && Set(axes) == Set(0..<rank), "permutation \(axes) is not a permutation of 0..<\(rank)")
        let view = Tensor(storage: storage, shape: axes.map { shape[$0] }, strides: axes.map { strides[$0] }, offset: offset)
        var inverse = [Int](repeating: 0, count: rank)
        for (i, axis) in axes.enumerated() { inverse[axis] = i }
        return Tensor.record(view, operation: "permute", inputs: [self]) { gradient in
            [gradient.permuted(inverse)]
        }
    }

    /// Swaps two axes (a view).
    public func transposed(_ axis0: Int = -2, _ axis1: Int = -1) -> Tensor {
        var axes = Array(0..<rank)
        axes.swapAt(Shape.normalizedAxis(axis0, rank: rank), Shape.normalizedAxis(axis1, rank: rank))
        return permuted(axes)
    }

    /// Elements `range` along `axis` (a view).
    public func slice(axis: Int, _ range: Range<Int>) -> Tensor {
        let axis = Shape.normalizedAxis(axis, rank: rank)
        precondition(range.lowerBound >= 0 && range.upperBound <= shape[axis], "slice \(range) is out of bounds for axis \(axis) of extent \(shape[axis])")
        var newShape = shape
        newShape[axis] = range.count
        let view = Tensor(storage: storage, shape: newShape, strides: strides, offset: offset + range.lowerBound * strides[axis])
        let originalShape = shape
        return Tensor.record(view, operation: "slice", inputs: [self]) { gradient in
            let full = Tensor.zeros(originalShape)
            withNoGrad { full.slice(axis: axis, range).assign(gradient) }
            return [full]
        }
    }

    /// Splits along `axis` into pieces of the given sizes (views).
    public func split(axis: Int, sizes: [Int]) -> [Tensor] {
        let axis = Shape.normalizedAxis(axis, rank: rank)
        precondition(sizes.reduce(0, +) == shape[axis], "split sizes \(sizes) do not add up to extent \(shape[axis]) of axis \(axis)")
        var start = 0
        return sizes.map { size in
            defer { start += size }
            return slice(axis: axis, start..<(start + size))
        }
    }

    /// Splits along `axis` into `parts` equal pieces (views).
    public func chunked(_ parts: Int, axis: Int) -> [Tensor] {
        let axis = Shape.normalizedAxis(axis, rank: rank)
        precondition(parts > 0 && shape[axis] % parts == 0, "axis \(axis) of extent \(shape[axis]) cannot be split into \(parts) equal parts")
        return split(axis: axis, sizes: Array(repeating: shape[axis] / parts, count: parts))
    }

    /// Joins tensors along `axis` (a copy).
    public static func concatenate(_ tensors: [Tensor], axis: Int) -> Tensor {
        precondition(!tensors.isEmpty, "concatenate needs at least one tensor")
        let rank = tensors[0].rank
        let axis = Shape.normalizedAxis(axis, rank: rank)
        for tensor in tensors {
            precondition(tensor.rank == rank, "concatenate needs tensors of equal rank")
            for i in 0..<rank where i != axis {
                precondition(tensor.shape[i] == tensors[0].shape[i], "concatenate along axis \(axis): shapes \(tensors[0].shape) and \(tensor.shape) differ on axis \(i)")
            }
        }
        var resultShape = tensors[0].shape
        resultShape[axis] = tensors.reduce(0) { $0 + $1.shape[axis] }
        let result = Tensor(uninitializedShape: resultShape)
        var start = 0
        var ranges: [Range<Int>] = []
        withNoGrad {
            for tensor in tensors {
                let range = start..<(start + tensor.shape[axis])
                result.slice(axis: axis, range).assign(tensor)
                ranges.append(range)
                start = range.upperBound
            }
        }
        return Tensor.record(result, operation: "concatenate", inputs: tensors) { gradient in
            ranges.map { gradient.slice(axis: axis, $0).contiguous() }
        }
    }

    /// Inserts an axis of extent 1 (a view).
    public func unsqueezed(_ axis: Int) -> Tensor {
        let axis = axis < 0 ? axis + rank + 1 : axis
        var newShape = shape
        newShape.insert(1, at: axis)
        return reshaped(newShape)
    }

    /// A view of this tensor broadcast to `target` (stride 0 on expanded axes). Gradients sum back.
    public func broadcast(to target: [Int]) -> Tensor {
        if target == shape { return self }
        guard let combined = Shape.broadcast(shape, target), combined == target else {
            preconditionFailure("shape \(shape) cannot be broadcast to \(target)")
        }
        let lead = target.count - rank
        var newStrides = [Int](repeating: 0, count: target.count)
        for i in 0..<rank where shape[i] != 1 || target[lead + i] == 1 {
            newStrides[lead + i] = strides[i]
        }
        let view = Tensor(storage: storage, shape: target, strides: newStrides, offset: offset)
        let originalShape = shape
        return Tensor.record(view, operation: "broadcast", inputs: [self]) { gradient in
            [gradient.summed(toShape: originalShape)]
        }
    }

    /// Copies `source` (broadcast to this shape) into this tensor's elements, in place. Not recorded.
    public func assign(_ source: Tensor) {
        let source = source.broadcast(to: shape).converted(to: .float32)
        let rowLength = shape.last ?? 1
        let destinationInner = strides.last ?? 1
        let sourceInner = source.strides.last ?? 1
        let destination = storage.floats
        let input = source.storage.floats
        // Walk both layouts row by row in lockstep.
        var sourceRows: [Int] = []
        sourceRows.reserveCapacity(Swift.max(1, count / Swift.max(rowLength, 1)))
        StridedRows(shape: shape, strides: source.strides, baseOffset: source.offset).forEachRow { rowOffset, _ in sourceRows.append(rowOffset) }
        StridedRows(shape: shape, strides: strides, baseOffset: offset).forEachRow { rowOffset, row in
            let from = input + sourceRows[row]
            let to = destination + rowOffset
            if destinationInner == 1 && sourceInner == 1 {
                to.update(from: from, count: rowLength)
            } else {
                for i in 0..<rowLength { to[i * destinationInner] = from[i * sourceInner] }
            }
        }
    }
}
