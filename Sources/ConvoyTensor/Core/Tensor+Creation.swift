extension Tensor {
    /// A Float32 tensor filled with zeros.
    public static func zeros(_ shape: [Int], requiresGrad: Bool = false) -> Tensor {
        let tensor = Tensor(storage: TensorStorage(zeroedDType: .float32, count: Shape.count(shape)), shape: shape)
        tensor.requiresGrad = requiresGrad
        return tensor
    }

    /// A Float32 tensor filled with zeros, for state that lives as long as a run (parameter, gradient and
    /// optimizer buffers): throws ``ConvoyError/outOfMemory(_:)``, naming `purpose`, when the system refuses
    /// the memory, rather than stopping the process as an operator's allocation must.
    public static func zeros(_ shape: [Int], for purpose: String) throws -> Tensor {
        Tensor(storage: try TensorStorage(zeroedDType: .float32, count: Shape.count(shape), for: purpose), shape: shape)
    }

    /// A Float32 tensor filled with `value`.
    public static func full(_ shape: [Int], value: Float, requiresGrad: Bool = false) -> Tensor {
        let tensor = Tensor(uninitializedShape: shape)
        tensor.floatPointer.update(repeating: value, count: tensor.count)
        tensor.requiresGrad = requiresGrad
        return tensor
    }

    /// A Float32 tensor filled with ones.
    public static func ones(_ shape: [Int], requiresGrad: Bool = false) -> Tensor {
        full(shape, value: 1, requiresGrad: requiresGrad)
    }

    /// A zero tensor with this tensor's shape.
    public func zerosLike() -> Tensor { Tensor.zeros(shape) }

    /// Normal(mean, std) values; element i depends only on (seed, stream, i), so every rank can reproduce it.
    public static func randomNormal(_ shape: [Int], mean: Float = 0, std: Float = 1, seed: UInt64, stream: UInt64 = 0, requiresGrad: Bool = false) -> Tensor {
        let tensor = Tensor(uninitializedShape: shape)
        let generator = PhiloxRandom(seed: seed, stream: stream)
        let output = tensor.floatPointer
        ComputePool.current.parallelFor(tensor.count, minimumChunk: 4096) { range in
            for i in range { output[i] = mean + std * generator.normal(at: UInt64(i)) }
        }
        tensor.requiresGrad = requiresGrad
        return tensor
    }

    /// Uniform values in [low, high); element i depends only on (seed, stream, i).
    public static func randomUniform(_ shape: [Int], low: Float = 0, high: Float = 1, seed: UInt64, stream: UInt64 = 0, requiresGrad: Bool = false) -> Tensor {
        let tensor = Tensor(uninitializedShape: shape)
        let generator = PhiloxRandom(seed: seed, stream: stream)
        let output = tensor.floatPointer
        ComputePool.current.parallelFor(tensor.count, minimumChunk: 4096) { range in
            for i in range { output[i] = low + (high - low) * generator.uniform(at: UInt64(i)) }
        }
        tensor.requiresGrad = requiresGrad
        return tensor
    }

    /// A contiguous copy of this tensor's elements in another dtype (not recorded on the tape).
    public func converted(to target: DType) -> Tensor {
        if target == dtype { return self }
        let source = contiguousStorageCopyIfNeeded()
        let result = Tensor(uninitializedShape: shape, dtype: target)
        let n = count
        switch (source.dtype, target) {
        case (.float32, .bfloat16):
            BFloat16.round(source.storage.floats + source.offset, to: result.storage.pointer.assumingMemoryBound(to: BFloat16.self), count: n)
        case (.bfloat16, .float32):
            BFloat16.widen(source.storage.pointer.assumingMemoryBound(to: BFloat16.self) + source.offset, to: result.storage.floats, count: n)
        default:
            preconditionFailure("unsupported conversion \(source.dtype) -> \(target)")
        }
        return result
    }

    /// Self when contiguous, otherwise a contiguous copy in the same dtype (not recorded).
    func contiguousStorageCopyIfNeeded() -> Tensor {
        if isContiguous { return self }
        let result = Tensor(uninitializedShape: shape, dtype: dtype)
        let elementSize = dtype.byteSize
        let rowLength = shape.last ?? 1
        let innerStride = strides.last ?? 1
        let source = storage.pointer
        let destination = result.storage.pointer
        StridedRows(shape: shape, strides: strides, baseOffset: offset).forEachRow { rowOffset, row in
            let out = destination + row * rowLength * elementSize
            if elementSize == 4 {
                let input = source.assumingMemoryBound(to: Float.self) + rowOffset
                let output = out.assumingMemoryBound(to: Float.self)
                if innerStride == 1 { output.update(from: input, count: rowLength) } else {
                    for i in 0..<rowLength { output[i] = input[i * innerStride] }
                }
            } else {
                let input = source.assumingMemoryBound(to: UInt16.self) + rowOffset
                let output = out.assumingMemoryBound(to: UInt16.self)
                for i in 0..<rowLength { output[i] = input[i * innerStride] }
            }
        }
        return result
    }
}
