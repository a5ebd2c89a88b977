import ConvoyTensor

/// Initial values of embedding rows, a function of (seed, table, id) alone: a row has the same values
/// whichever server (or local table) holds it and however many servers there are, so results do not
/// depend on the number of servers.
public struct RowInitializer: Sendable, Equatable {
    public var seed: UInt64
    /// Rows are N(0, std²).
    public var std: Float

    public init(seed: UInt64, std: Float = 0.01) {
        self.seed = seed
        self.std = std
    }

    /// Writes row `id` of table `table` (`width` floats) into `destination`.
    public func fill(_ destination: UnsafeMutablePointer<Float>, table: Int, id: Int, width: Int) {
        let random = PhiloxRandom(seed: seed, stream: PhiloxRandom.mix(PhiloxRandom.streamID("sparse-table"), UInt64(table), UInt64(id)))
        for i in 0..<width { destination[i] = std * random.normal(at: UInt64(i)) }
    }
}
