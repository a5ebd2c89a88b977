import ConvoyNN

/// The communication tensor parallelism needs per micro-batch, by Megatron's accounting, as a wrapping process
/// group counts it: the elements of each collective's buffer (an all-gather counted by what it gathers, a
/// reduce-scatter by what it reduces), 4 bytes each (fp32).
///
/// - Without sequence parallelism each layer all-reduces b·s·h elements twice forward (after the two
///   row-parallel projections) and twice backward (the inputs of the two column-parallel projections); the
///   vocabulary-sharded embedding adds one forward all-reduce and the tied head one backward.
/// - With it, each of those all-reduces becomes a reduce-scatter and an all-gather of b·s·h (so twice the
///   elements are handed over, the same volume on the wire); backward also gathers the inputs of the two
///   column-parallel projections again (b·s·h each), because only their sequence shards are kept for the weight
///   gradients, as Megatron does (Korthikanti et al. 2022, §4.2.2); and the replicated parameters used on sequence
///   shards — layer norms and row-parallel biases, 6·h per layer and 2·h for the final norm — have their partial
///   gradients all-reduced; the position embedding's slice gathers its s·h gradient.
/// - The vocab-parallel loss all-reduces three values per token.
public enum TensorParallelCommunication {
    /// Elements handed to tensor-parallel collectives by each rank in one micro-batch of `sequences` × `time`
    /// tokens (forward and backward); 0 with tp 1.
    public static func elementsPerMicroBatch(model: ModelShape, tp: Int, sequenceParallel: Bool, sequences: Int, time: Int) -> Int {
        guard tp > 1 else { return 0 }
        let h = model.width, layers = model.layers
        let activation = sequences * time * h
        let loss = 3 * sequences * time
        guard sequenceParallel else { return (4 * layers + 2) * activation + loss }
        return (10 * layers + 4) * activation + layers * 6 * h + 2 * h + time * h + loss
    }

    /// ``elementsPerMicroBatch(model:tp:sequenceParallel:sequences:time:)`` in bytes (fp32).
    public static func bytesPerMicroBatch(model: ModelShape, tp: Int, sequenceParallel: Bool, sequences: Int, time: Int) -> Int {
        4 * elementsPerMicroBatch(model: model, tp: tp, sequenceParallel: sequenceParallel, sequences: sequences, time: time)
    }
}
