import ConvoyTensor

/// What a forward pass needs besides its inputs: whether dropout is active and the coordinates its masks are
/// derived from (seed, step, and where this batch sits in the step's global batch).
public struct ForwardContext: Sendable {
    /// Dropout on (training) or off.
    public var training: Bool
    /// Seed of the run (dropout masks).
    public var seed: UInt64
    /// The optimizer step being computed.
    public var step: Int
    /// Index within the global batch of this forward's first sequence.
    public var firstSequence: Int
    /// Which activations the layers recompute in backward instead of keeping (only while recording).
    public var recompute: ActivationRecompute

    public init(training: Bool = false, seed: UInt64 = 0, step: Int = 0, firstSequence: Int = 0, recompute: ActivationRecompute = ActivationRecompute()) {
        self.training = training
        self.seed = seed
        self.step = step
        self.firstSequence = firstSequence
        self.recompute = recompute
    }

    /// An evaluation context (no dropout).
    public static let evaluation = ForwardContext()

    /// The dropout key for one site of one layer.
    public func dropoutKey(layer: Int, site: DropoutSite) -> DropoutKey {
        DropoutKey(seed: seed, step: UInt64(step), layer: UInt64(layer + 1), site: site.rawValue, firstSequence: firstSequence)
    }
}

/// Where in a layer a dropout is applied (each site draws an independent mask).
public enum DropoutSite: UInt64, Sendable {
    case embedding = 1
    case attentionProbabilities = 2
    case attentionOutput = 3
    case mlpOutput = 4
}
