/// How a parameter is cut across the tensor-parallel ranks (its Shard(dim) placement along tp), declared by
/// the model: the model's tensor-parallel plan is these declarations, not a second model.
///
/// The cut dimension is seen as `blocks` equal blocks (GPT-2's fused c_attn is [Q|K|V] along its output
/// dimension: 3 blocks), and rank r takes piece r of every block, in block order — so each rank holds the Q, K
/// and V of the same heads. With `padded`, the dimension is first padded with zeros to a multiple of the rank
/// count (a vocabulary); the padding never leaves the ranks: exports assemble the whole, unpadded tensor.
public struct TensorParallelSharding: Sendable, Equatable {
    /// The dimension cut.
    public var dimension: Int
    /// Equal blocks of that dimension, each cut separately.
    public var blocks: Int
    /// Whether the dimension is padded with zeros to a multiple of the rank count.
    public var padded: Bool

    public init(dimension: Int, blocks: Int = 1, padded: Bool = false) {
        self.dimension = dimension
        self.blocks = blocks
        self.padded = padded
    }

    /// Column-parallel linear weight [in, out] (output features cut).
    public static let columns = TensorParallelSharding(dimension: 1)
    /// Row-parallel linear weight [in, out] (input features cut), or a column-parallel bias.
    public static let rows = TensorParallelSharding(dimension: 0)
}
