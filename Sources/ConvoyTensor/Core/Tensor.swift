/// An n-dimensional array with reverse-mode automatic differentiation.
///
/// A tensor is a view (shape, strides, offset) over a reference-counted ``TensorStorage``; reshape,
/// transpose and slice return views that share storage where no copy is needed. Operations on tensors that
/// require gradients are recorded on the autograd tape; ``backward()`` walks it in reverse.
///
/// Leaf tensors that require gradients (parameters, or a pipeline stage's received input) accumulate their
/// gradient in ``grad`` across backward passes until it is cleared, and fire their post-accumulate-grad
/// hooks as soon as that gradient is final for the current backward pass.
public final class Tensor: @unchecked Sendable {
    /// The memory this tensor views.
    public internal(set) var storage: TensorStorage
    /// Extent along each axis.
    public private(set) var shape: [Int]
    /// Element step along each axis (in elements, not bytes).
    public private(set) var strides: [Int]
    /// Index of the first element in ``storage``.
    public private(set) var offset: Int

    /// Whether gradients flow to (leaf) or through (interior) this tensor.
    public var requiresGrad: Bool
    /// The accumulated gradient of a leaf tensor; nil until the first backward pass reaches it.
    public var grad: Tensor?
    /// An optional name, used in error messages and by modules (e.g. `h.0.attn.c_attn.weight`).
    public var name: String?
    /// Where this tensor lives on the device mesh (per axis: replicate, shard or partial) and whether it is
    /// shared with another place; parallel strategies read it to decide what to reduce and what to count.
    public var placement = TensorPlacement()

    /// The tape entry that produced this tensor (nil for leaves).
    var gradNode: GradNode?
    /// Hooks and interceptors of a leaf tensor.
    var leafHooks: LeafGradHooks?

    /// Creates a view over existing storage.
    public init(storage: TensorStorage, shape: [Int], strides: [Int]? = nil, offset: Int = 0, requiresGrad: Bool = false) {
        self.storage = storage
        self.shape = shape
        self.strides = strides ?? Shape.contiguousStrides(shape)
        self.offset = offset
        self.requiresGrad = requiresGrad
    }

    /// Creates a tensor with uninitialised contents.
    public convenience init(uninitializedShape shape: [Int], dtype: DType = .float32) {
        self.init(storage: TensorStorage(dtype: dtype, count: Shape.count(shape)), shape: shape)
    }

    /// Creates a Float32 tensor from row-major values.
    public convenience init(shape: [Int], values: [Float], requiresGrad: Bool = false) {
        precondition(Shape.count(shape) == values.count, "shape \(shape) holds \(Shape.count(shape)) elements but \(values.count) values were given")
        self.init(uninitializedShape: shape)
        values.withUnsafeBufferPointer { source in
            storage.floats.update(from: source.baseAddress!, count: values.count)
        }
        self.requiresGrad = requiresGrad
    }

    /// Creates a scalar (rank-0) Float32 tensor.
    public convenience init(scalar: Float) {
        self.init(shape: [], values: [scalar])
    }

    /// Element type.
    @inlinable public var dtype: DType { storage.dtype }
    /// Number of axes.
    @inlinable public var rank: Int { shape.count }
    /// Number of elements.
    @inlinable public var count: Int { Shape.count(shape) }

    /// Whether the elements are laid out densely in row-major order starting at ``offset``.
    public var isContiguous: Bool {
        var expected = 1
        for axis in stride(from: shape.count - 1, through: 0, by: -1) where shape[axis] != 1 {
            if strides[axis] != expected { return false }
            expected *= shape[axis]
        }
        return true
    }

    /// Pointer to the first Float32 element. Only meaningful with the layout given by ``strides``.
    @inlinable
    public var floatPointer: UnsafeMutablePointer<Float> {
        precondition(dtype == .float32, "this operation needs a float32 tensor; convert with converted(to: .float32)")
        return storage.floats + offset
    }

    /// Pointer to the first element of a contiguous Float32 tensor; traps with a clear message otherwise.
    @inlinable
    public var contiguousFloats: UnsafeMutablePointer<Float> {
        precondition(isContiguous, "this operation needs a contiguous tensor; call contiguous() first")
        return floatPointer
    }

    /// The elements in row-major order, converted to Float.
    public func toArray() -> [Float] {
        let source = converted(to: .float32).contiguous()
        return Array(UnsafeBufferPointer(start: source.floatPointer, count: source.count))
    }

    /// The value of a one-element tensor.
    public var scalarValue: Float {
        precondition(count == 1, "scalarValue needs a one-element tensor, this one has shape \(shape)")
        return toArray()[0]
    }

    /// Replaces this leaf tensor's memory by another tensor's (same shape and dtype), keeping its identity,
    /// gradient and hooks. Flat-buffer optimizers and ZeRO use this to make parameters views into one buffer.
    public func rebind(to other: Tensor) {
        precondition(gradNode == nil, "only leaf tensors can be rebound")
        precondition(other.shape == shape && other.dtype == dtype, "rebind needs the same shape and dtype: \(shape) \(dtype) vs \(other.shape) \(other.dtype)")
        storage = other.storage
        strides = other.strides
        offset = other.offset
    }

    /// Makes this leaf tensor view `other`'s memory with `other`'s shape, keeping its identity, name, placement
    /// and hooks. The gradient is left alone (a synchronizer may own it as a view into its buffer): a
    /// tensor-parallel plan replaces a whole parameter by its shard this way before any gradient exists, and puts
    /// the whole tensor back only for evaluation and export, where no gradient is touched.
    public func replaceValue(with other: Tensor) {
        precondition(gradNode == nil, "only leaf tensors can take another value")
        precondition(other.dtype == dtype, "replaceValue needs the same dtype: \(dtype) vs \(other.dtype)")
        storage = other.storage
        shape = other.shape
        strides = other.strides
        offset = other.offset
    }

    /// A tensor sharing this one's memory but cut off from the tape.
    public func detached() -> Tensor {
        Tensor(storage: storage, shape: shape, strides: strides, offset: offset)
    }

    /// Whether two tensors view exactly the same elements of the same storage.
    public func sharesMemory(with other: Tensor) -> Bool { storage === other.storage }
}

extension Tensor: CustomStringConvertible {
    public var description: String {
        let values = count <= 16 ? toArray().map { String($0) }.joined(separator: ", ") : "…"
        return "Tensor(shape: \(shape), dtype: \(dtype), [\(values)])"
    }
}
