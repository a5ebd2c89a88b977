/// Which activations a training forward keeps for backward and which it recomputes there (Megatron's
/// granularity): nothing recomputed; the attention core (its [B, heads, T, T] probabilities, the part of a
/// layer's activations that grows with T²); or whole blocks, keeping only each block's input.
public struct ActivationRecompute: Sendable, Equatable {
    /// How much of a block is recomputed.
    public enum Granularity: String, Sendable, CaseIterable {
        case none, selective, full
    }

    /// How much of a block is recomputed.
    public var granularity: Granularity
    /// How many blocks recompute, counted from the model's first (nil: all). Megatron's "block" method: the
    /// first blocks' activations are held longest under a pipeline schedule.
    public var layers: Int?

    public init(granularity: Granularity = .none, layers: Int? = nil) {
        self.granularity = granularity
        self.layers = layers
    }

    /// The granularity block `layer` (0-based index in the whole model) uses.
    public func granularity(ofLayer layer: Int) -> Granularity {
        guard let layers, layer >= layers else { return granularity }
        return .none
    }
}
