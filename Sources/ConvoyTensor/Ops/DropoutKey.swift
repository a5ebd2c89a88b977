/// Identifies one dropout site in one step so that its mask can be regenerated anywhere.
///
/// The keep/drop decision for element j of sequence s is a pure function of (seed, step, layer, site,
/// global sequence index s, j). A global batch split across data-parallel ranks or micro-batches therefore
/// draws exactly the masks one process would have drawn.
public struct DropoutKey: Sendable, Hashable {
    /// The run's seed.
    public var seed: UInt64
    /// The optimizer step.
    public var step: UInt64
    /// The layer (block index; embeddings use a separate value).
    public var layer: UInt64
    /// Which dropout inside the layer (attention probabilities, residual, …).
    public var site: UInt64
    /// Global index (within the step's global batch) of the first sequence of this tensor's leading axis.
    public var firstSequence: Int

    /// Creates a key.
    public init(seed: UInt64, step: UInt64, layer: UInt64, site: UInt64, firstSequence: Int) {
        self.seed = seed
        self.step = step
        self.layer = layer
        self.site = site
        self.firstSequence = firstSequence
    }

    /// The generator for this key (every element of every sequence has its own counter in it).
    var generator: PhiloxRandom {
        PhiloxRandom(seed: seed, stream: PhiloxRandom.mix(step, layer, site))
    }

    /// Whether element `element` of local sequence `sequence` is kept, with `elementsPerSequence` per sequence.
    @inline(__always)
    func keeps(sequence: Int, element: Int, elementsPerSequence: Int, probability: Float, generator: PhiloxRandom) -> Bool {
        let counter = UInt64(firstSequence + sequence) &* UInt64(elementsPerSequence) &+ UInt64(element)
        return generator.uniform(at: counter) >= probability
    }
}

/// Where a piece of a tensor sits in the whole tensor: the whole tensor's shape and the piece's first index
/// along each axis (a shard of a distributed tensor).
public struct PieceLocation: Sendable, Equatable {
    public var wholeShape: [Int]
    public var start: [Int]

    public init(wholeShape: [Int], start: [Int]) {
        self.wholeShape = wholeShape
        self.start = start
    }
}

extension Tensor {
    /// Inverted dropout: zeroes each element with `probability` and scales the rest by 1/(1−p). The leading
    /// axis indexes sequences; masks come from `key`, so they are independent of how the batch is split.
    /// With `piece`, `x` is that piece of a larger tensor and each element draws the mask of its position in
    /// the whole tensor (tensor- and sequence-parallel shards drop what one process would drop).
    public static func dropout(_ x: Tensor, probability: Float, key: DropoutKey, piece: PieceLocation? = nil) -> Tensor {
        if piece == nil, let placed = PlacementDeduction.dispatch(.dropout(x, probability: probability, key: key)) { return placed }
        precondition(probability >= 0 && probability < 1, "dropout probability must be in [0, 1), got \(probability)")
        if probability == 0 { return x }
        let input = x.contiguous()
        let mask = Tensor(uninitializedShape: x.shape)
        let scale = 1 / (1 - probability)
        let generator = key.generator
        let mp = mask.floatPointer
        let location = piece ?? PieceLocation(wholeShape: x.shape, start: Array(repeating: 0, count: x.rank))
        precondition(location.wholeShape.count == x.rank && location.start.count == x.rank, "dropout: piece \(location) does not match shape \(x.shape)")
        let rank = x.rank
        let localStrides = Shape.contiguousStrides(x.shape), wholeStrides = Shape.contiguousStrides(location.wholeShape)
        let perSequence = Swift.max(rank == 0 ? 1 : Shape.count(Array(location.wholeShape.dropFirst())), 1)
        let isWhole = location.wholeShape == x.shape
        ComputePool.current.parallelFor(input.count, minimumChunk: 4096) { range in
            for i in range {
                var sequence = i / perSequence, element = i % perSequence
                if !isWhole {
                    // The element's index in the whole tensor: local coordinates shifted by the piece's start.
                    var remainder = i
                    sequence = 0
                    element = 0
                    for axis in 0..<rank {
                        let coordinate = remainder / localStrides[axis] + location.start[axis]
                        remainder %= localStrides[axis]
                        if axis == 0 { sequence = coordinate } else { element += coordinate * wholeStrides[axis] }
                    }
                }
                let keep = key.keeps(sequence: sequence, element: element, elementsPerSequence: perSequence, probability: probability, generator: generator)
                mp[i] = keep ? scale : 0
            }
        }
        let result = applyBinary(input, mask, .multiply)
        return record(result, operation: "dropout", inputs: [x]) { gradient in
            [applyBinary(gradient.contiguous(), mask, .multiply)]
        }
    }
}
