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

extension Tensor {
    /// Inverted dropout: zeroes each element with `probability` and scales the rest by 1/(1−p). The leading
    /// axis indexes sequences; masks come from `key`, so they are independent of how the batch is split.
    public static func dropout(_ x: Tensor, probability: Float, key: DropoutKey) -> Tensor {
        precondition(probability >= 0 && probability < 1, "dropout probability must be in [0, 1), got \(probability)")
        if probability == 0 { return x }
        let input = x.contiguous()
        let sequences = x.shape.first ?? 1
        let perSequence = input.count / Swift.max(sequences, 1)
        let mask = Tensor(uninitializedShape: x.shape)
        let scale = 1 / (1 - probability)
        let generator = key.generator
        let mp = mask.floatPointer
        ComputePool.current.parallelFor(input.count, minimumChunk: 4096) { range in
            for i in range {
                let keep = key.keeps(sequence: i / perSequence, element: i % perSequence, elementsPerSequence: perSequence, probability: probability, generator: generator)
                mp[i] = keep ? scale : 0
            }
        }
        let result = applyBinary(input, mask, .multiply)
        return record(result, operation: "dropout", inputs: [x]) { gradient in
            [applyBinary(gradient.contiguous(), mask, .multiply)]
        }
    }
}
