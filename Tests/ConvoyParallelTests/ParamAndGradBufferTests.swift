import ConvoyNN
import ConvoyParallel
import ConvoyTensor
import Testing

private let bufferTestConfiguration = GPTConfiguration(vocabularySize: 32, contextLength: 8, layers: 2, heads: 2, width: 16)
/// Small caps (bytes) so the tiny GPT still gets several buckets; c_fc's weight (4096 B) fills one alone.
private let gptFirstCap = 1024, gptCap = 4096

/// Parameters of awkward sizes (so buckets need padding for every dp > 1), one larger than any cap.
private func handMadeParameters() -> [(name: String, parameter: Parameter)] {
    let sizes = [5, 7, 3, 11, 1, 40, 13, 2, 9]
    return sizes.enumerated().map { index, size in
        let values = (0..<size).map { Float(index * 100 + $0) * 0.01 - 0.3 }
        let parameter = Tensor(shape: size % 2 == 0 ? [2, size / 2] : [size], values: values, requiresGrad: true)
        parameter.name = "p\(index)"
        return ("p\(index)", parameter)
    }
}
private let handMadeFirstCap = 32, handMadeCap = 64

private func gptBatch() -> (inputs: [Int32], targets: [Int32]) {
    let inputs = (0..<16).map { Int32(($0 * 5 + 3) % 32) }
    return (inputs, inputs.map { ($0 * 7 + 1) % 32 })
}

/// The layout invariants every buffer must satisfy, whatever its parameters and dp.
private func expectLayout(_ buffer: ParamAndGradBuffer, registration: [(name: String, parameter: Parameter)], originals: [[Float]],
                          dp: Int, firstCap: Int, cap: Int, bucketsPerGroup: Int) {
    #expect(buffer.dataParallelSize == dp)
    #expect(buffer.parameterDType == .float32 && buffer.gradientDType == .float32)
    #expect(buffer.parameterBuffer.shape == [buffer.totalCount] && buffer.gradientBuffer.shape == [buffer.totalCount])

    // Contiguous buckets covering the buffer, each padded to a multiple of dp, parameters tiling them.
    var cursor = 0
    for (index, bucket) in buffer.buckets.enumerated() {
        #expect(bucket.index == index)
        #expect(bucket.range.lowerBound == cursor)
        #expect(bucket.range.count % dp == 0)
        #expect(bucket.parameters.count == bucket.parameterRanges.count && !bucket.parameters.isEmpty)
        var inside = bucket.range.lowerBound
        for (parameter, range) in zip(bucket.parameters, bucket.parameterRanges) {
            #expect(range.lowerBound == inside && range.count == parameter.count)
            inside = range.upperBound
        }
        #expect(bucket.paddingCount == bucket.range.upperBound - inside)
        #expect(bucket.paddingCount >= 0 && bucket.paddingCount < dp)
        // Within its cap (counted without padding) unless it is one oversized parameter.
        let bytes = bucket.parameters.reduce(0) { $0 + $1.count * 4 }
        #expect(bytes <= (index == 0 ? firstCap : cap) || bucket.parameters.count == 1)
        cursor = bucket.range.upperBound
    }
    #expect(cursor == buffer.totalCount)
    #expect(buffer.shardElementCount * dp == buffer.totalCount)

    // Reverse registration order, the same in `parameters`, `parameterRanges` and the buckets.
    let bucketOrder = buffer.buckets.flatMap(\.parameters)
    #expect(bucketOrder.map(ObjectIdentifier.init) == registration.reversed().map { ObjectIdentifier($0.parameter) })
    #expect(buffer.parameters.map(\.name) == registration.reversed().map(\.name))
    #expect(buffer.parameterRanges == buffer.buckets.flatMap(\.parameterRanges))

    // Bucket groups: consecutive, bucketsPerGroup each (the last may be short), partitioning the buckets.
    #expect(buffer.bucketGroups.flatMap { $0 } == Array(buffer.buckets.indices))
    for (index, group) in buffer.bucketGroups.enumerated() {
        #expect(group.count == bucketsPerGroup || (index == buffer.bucketGroups.count - 1 && (1...bucketsPerGroup).contains(group.count)))
    }

    // Values preserved; parameters and gradients are views into the buffers; gradients start at zero.
    let flatValues = buffer.parameterBuffer.toArray()
    for (index, entry) in registration.enumerated() {
        let parameter = entry.parameter
        let range = buffer.bufferRange(of: parameter)!
        #expect(parameter.toArray() == originals[index])
        #expect(Array(flatValues[range]) == originals[index])
        #expect(parameter.storage === buffer.parameterBuffer.storage && parameter.offset == range.lowerBound && parameter.isContiguous)
        let grad = parameter.grad!
        #expect(grad.shape == parameter.shape)
        #expect(grad.storage === buffer.gradientBuffer.storage && grad.offset == range.lowerBound && grad.isContiguous)
        #expect(grad.toArray().allSatisfy { $0 == 0 })
        #expect(buffer.bucketIndex(of: parameter).map { buffer.buckets[$0].parameters.contains { $0 === parameter } } == true)
    }
    #expect(buffer.parameters.indices.allSatisfy { buffer.parameterIsView($0) && buffer.gradientIsView($0) })
    #expect(paddingValues(of: buffer.parameterBuffer, buffer).allSatisfy { $0 == 0 })
}

/// The elements of `tensor` (a flat buffer of `buffer`'s layout) that belong to no parameter.
private func paddingValues(of tensor: Tensor, _ buffer: ParamAndGradBuffer) -> [Float] {
    let values = tensor.toArray()
    return buffer.buckets.flatMap { bucket in values[(bucket.range.upperBound - bucket.paddingCount)..<bucket.range.upperBound] }
}

@Suite struct ParamAndGradBufferTests {
    @Test(arguments: [1, 2, 3, 4])
    func gptLayout(dp: Int) throws {
        let gpt = try GPT(bufferTestConfiguration, seed: 1)
        let registration = gpt.namedParameters()
        let originals = registration.map { $0.parameter.toArray() }
        let buffer = try ParamAndGradBuffer(parameters: registration, dataParallelSize: dp, firstBucketCapBytes: gptFirstCap,
                                            bucketCapBytes: gptCap, bucketsPerGroup: 2)
        #expect(buffer.buckets.count >= 4)
        expectLayout(buffer, registration: registration, originals: originals, dp: dp, firstCap: gptFirstCap, cap: gptCap, bucketsPerGroup: 2)
        // Writing through the buffer is seen by the parameter (same memory, not a copy).
        let first = registration[0].parameter
        let start = buffer.bufferRange(of: first)!.lowerBound
        buffer.parameterBuffer.floatPointer[start] = 42
        #expect(first.toArray()[0] == 42)
    }

    @Test(arguments: [1, 2, 3, 4])
    func handMadeLayout(dp: Int) throws {
        let registration = handMadeParameters()
        let originals = registration.map { $0.parameter.toArray() }
        let buffer = try ParamAndGradBuffer(parameters: registration, dataParallelSize: dp, firstBucketCapBytes: handMadeFirstCap,
                                            bucketCapBytes: handMadeCap, bucketsPerGroup: 3)
        expectLayout(buffer, registration: registration, originals: originals, dp: dp, firstCap: handMadeFirstCap, cap: handMadeCap, bucketsPerGroup: 3)
        // The 40-element parameter exceeds every cap and sits alone.
        #expect(buffer.buckets.contains { $0.parameters.count == 1 && $0.parameters[0].count == 40 })
        if dp > 1 { #expect(buffer.buckets.contains { $0.paddingCount > 0 }) }
    }

    @Test(arguments: [1, 2, 3, 4])
    func backwardWritesIntoGradientBuffer(dp: Int) throws {
        let reference = try GPT(bufferTestConfiguration, seed: 1)
        let gpt = try GPT(bufferTestConfiguration, seed: 1)
        let buffer = try ParamAndGradBuffer(parameters: gpt.namedParameters(), dataParallelSize: dp, firstBucketCapBytes: gptFirstCap,
                                            bucketCapBytes: gptCap)
        let batch = gptBatch()
        let referenceLoss = reference.loss(batch.inputs, targets: batch.targets, batch: 2, time: 8)
        try referenceLoss.backward()
        let loss = gpt.loss(batch.inputs, targets: batch.targets, batch: 2, time: 8)
        #expect(loss.scalarValue == referenceLoss.scalarValue)
        try loss.backward()

        let gradients = buffer.gradientBuffer.toArray()
        for ((name, expected), (_, parameter)) in zip(reference.namedParameters(), gpt.namedParameters()) {
            let want = expected.grad!.toArray()
            let grad = parameter.grad!
            #expect(grad.storage === buffer.gradientBuffer.storage, "gradient of \(name) left the buffer")
            let got = Array(gradients[buffer.bufferRange(of: parameter)!])
            let error = zip(want, got).map { abs($0 - $1) }.max() ?? 0
            let scale = max(want.map(abs).max() ?? 0, 1e-6)
            #expect(error / scale <= 1e-6, "gradient of \(name) differs by \(error)")
            #expect(grad.toArray() == got)
        }
        #expect(gradients.contains { $0 != 0 })
        #expect(paddingValues(of: buffer.gradientBuffer, buffer).allSatisfy { $0 == 0 })

        // A second backward accumulates in place, still inside the buffer.
        try gpt.loss(batch.inputs, targets: batch.targets, batch: 2, time: 8).backward()
        let doubled = buffer.gradientBuffer.toArray()
        #expect(zip(doubled, gradients).allSatisfy { abs($0 - 2 * $1) <= 1e-5 * max(1, abs($1)) })
        #expect(paddingValues(of: buffer.gradientBuffer, buffer).allSatisfy { $0 == 0 })
    }

    @Test(arguments: [1, 2, 3, 4])
    func handMadeBackwardLeavesPaddingZero(dp: Int) throws {
        let registration = handMadeParameters()
        let buffer = try ParamAndGradBuffer(parameters: registration, dataParallelSize: dp, firstBucketCapBytes: handMadeFirstCap,
                                            bucketCapBytes: handMadeCap)
        // loss = Σ p², so every gradient is 2p.
        let loss = registration.map { ($0.parameter * $0.parameter).sum() }.reduce(Tensor(scalar: 0), +)
        try loss.backward()
        for (_, parameter) in registration {
            #expect(zip(parameter.grad!.toArray(), parameter.toArray()).allSatisfy { abs($0 - 2 * $1) <= 1e-6 })
            #expect(parameter.grad!.storage === buffer.gradientBuffer.storage)
        }
        #expect(paddingValues(of: buffer.gradientBuffer, buffer).allSatisfy { $0 == 0 })
        #expect(paddingValues(of: buffer.parameterBuffer, buffer).allSatisfy { $0 == 0 })
    }

    @Test(arguments: [1, 2, 3, 4])
    func shardsPartitionEveryBucket(dp: Int) throws {
        for (registration, firstCap, cap) in [(handMadeParameters(), handMadeFirstCap, handMadeCap),
                                              (try GPT(bufferTestConfiguration, seed: 1).namedParameters(), gptFirstCap, gptCap)] {
            let buffer = try ParamAndGradBuffer(parameters: registration, dataParallelSize: dp, firstBucketCapBytes: firstCap, bucketCapBytes: cap)
            var owner = [Int](repeating: -1, count: buffer.totalCount)
            for rank in 0..<dp {
                let shards = buffer.localShardRanges(rank: rank)
                #expect(shards.count == buffer.buckets.count)
                #expect(shards.reduce(0) { $0 + $1.count } == buffer.shardElementCount)
                for (bucket, shard) in zip(buffer.buckets, shards) {
                    #expect(shard == buffer.shardRange(of: bucket.index, rank: rank))
                    // Same offset in every bucket: rank r starts r equal shares in.
                    #expect(shard.count == bucket.range.count / dp)
                    #expect(shard.lowerBound == bucket.range.lowerBound + rank * shard.count)
                    for element in shard {
                        #expect(owner[element] == -1, "element \(element) owned twice")
                        owner[element] = rank
                    }
                }
            }
            #expect(owner.allSatisfy { $0 >= 0 }, "some element is owned by no rank")
            for bucket in buffer.buckets {
                #expect((0..<dp).map { buffer.shardRange(of: bucket.index, rank: $0) }.flatMap { Array($0) } == Array(bucket.range))
            }
        }
    }

    @Test(arguments: [1, 2, 3, 4])
    func ownedSlicesCoverEveryParameterElementOnce(dp: Int) throws {
        for (registration, firstCap, cap) in [(handMadeParameters(), handMadeFirstCap, handMadeCap),
                                              (try GPT(bufferTestConfiguration, seed: 1).namedParameters(), gptFirstCap, gptCap)] {
            let buffer = try ParamAndGradBuffer(parameters: registration, dataParallelSize: dp, firstBucketCapBytes: firstCap, bucketCapBytes: cap)
            // Every parameter element gets a distinct value: its buffer index.
            for range in buffer.parameterRanges {
                for element in range { buffer.parameterBuffer.floatPointer[element] = Float(element) }
            }
            var covered = Dictionary(uniqueKeysWithValues: registration.map { (ObjectIdentifier($0.parameter), [Int](repeating: 0, count: $0.parameter.count)) })
            for rank in 0..<dp {
                let shards = buffer.localShardRanges(rank: rank)
                for slice in buffer.ownedSlices(rank: rank) {
                    #expect(!slice.parameterRange.isEmpty && slice.parameterRange.count == slice.bufferRange.count)
                    #expect(shards.contains(where: { $0.lowerBound <= slice.bufferRange.lowerBound && slice.bufferRange.upperBound <= $0.upperBound }), "slice outside rank \(rank)'s shards")
                    let values = slice.parameter.toArray()
                    #expect(Array(values[slice.parameterRange]) == slice.bufferRange.map(Float.init))
                    for element in slice.parameterRange { covered[ObjectIdentifier(slice.parameter)]![element] += 1 }
                }
            }
            #expect(covered.values.allSatisfy { $0.allSatisfy { $0 == 1 } }, "some parameter element is owned zero or several times")
        }
    }

    @Test func zeroGradientsRestoresViews() throws {
        let registration = handMadeParameters()
        let buffer = try ParamAndGradBuffer(parameters: registration, dataParallelSize: 3, firstBucketCapBytes: handMadeFirstCap,
                                            bucketCapBytes: handMadeCap)
        try registration.map { ($0.parameter * $0.parameter).sum() }.reduce(Tensor(scalar: 0), +).backward()
        registration[0].parameter.grad = nil
        registration[1].parameter.grad = Tensor.ones(registration[1].parameter.shape)
        #expect(!buffer.gradientIsView(buffer.parameters.firstIndex { $0.parameter === registration[0].parameter }!))
        buffer.zeroGradients()
        #expect(buffer.gradientBuffer.toArray().allSatisfy { $0 == 0 })
        for (_, parameter) in registration {
            #expect(parameter.grad!.storage === buffer.gradientBuffer.storage && parameter.grad!.offset == buffer.bufferRange(of: parameter)!.lowerBound)
        }
        #expect(buffer.parameters.indices.allSatisfy { buffer.gradientIsView($0) })
    }

    @Test func refusesInvalidConfigurations() throws {
        func make(_ parameters: [(name: String, parameter: Parameter)] = handMadeParameters(), dp: Int = 2, first: Int = 64, cap: Int = 64,
                  perGroup: Int = 1, gradientDType: DType = .float32) throws {
            _ = try ParamAndGradBuffer(parameters: parameters, dataParallelSize: dp, firstBucketCapBytes: first, bucketCapBytes: cap,
                                       bucketsPerGroup: perGroup, gradientDType: gradientDType)
        }
        func expectInvalidConfiguration(_ body: () throws -> Void, sourceLocation: SourceLocation = #_sourceLocation) {
            let error = #expect(throws: ConvoyError.self, sourceLocation: sourceLocation) { try body() }
            guard case .invalidConfiguration? = error else {
                Issue.record("expected invalidConfiguration, got \(String(describing: error))", sourceLocation: sourceLocation)
                return
            }
        }
        expectInvalidConfiguration { try make(dp: 0) }
        expectInvalidConfiguration { try make(first: 0) }
        expectInvalidConfiguration { try make(cap: -1) }
        expectInvalidConfiguration { try make(perGroup: 0) }
        // bf16 is a communication dtype (gathered compute copies, reduced gradients); the buffers stay fp32.
        #expect(try ParamAndGradBuffer(parameters: handMadeParameters(), dataParallelSize: 2, firstBucketCapBytes: 64, bucketCapBytes: 64,
                                       parameterDType: .bfloat16, gradientDType: .bfloat16).gradientBuffer.dtype == .float32)
        let shared = Tensor(shape: [3], values: [1, 2, 3], requiresGrad: true)
        expectInvalidConfiguration { try make([("a", shared), ("b", shared)]) }
        let half = Tensor(shape: [4], values: [1, 2, 3, 4]).converted(to: .bfloat16)
        expectInvalidConfiguration { try make([("a", Tensor(shape: [3], values: [1, 2, 3], requiresGrad: true)), ("b", half)]) }
        // Nothing to lay out is not an error.
        let empty = try ParamAndGradBuffer(parameters: [], dataParallelSize: 4, firstBucketCapBytes: 64, bucketCapBytes: 64)
        #expect(empty.buckets.isEmpty && empty.totalCount == 0 && empty.shardElementCount == 0 && empty.bucketGroups.isEmpty)
        #expect(empty.ownedSlices(rank: 3).isEmpty)
    }
}
