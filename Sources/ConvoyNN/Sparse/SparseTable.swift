import ConvoyTensor

/// The rows of one embedding table that one holder keeps — the whole table (one process, `shardCount` 1) or
/// one parameter server's shard (rows with id mod `shardCount` == `shardIndex`, stored at id / `shardCount`) —
/// with their lazy per-row optimizer state. Values and state are allocated once, counted by the allocator as
/// parameters and optimizer state.
public final class SparseTable {
    /// The table's index in the model (which feature).
    public let table: Int
    /// Rows of the whole table.
    public let rows: Int
    public let width: Int
    public let shardIndex: Int
    public let shardCount: Int
    public let optimizer: RowOptimizer
    /// [localRows, width].
    public let values: Tensor
    /// [localRows, optimizer.stateCount(width)], zeros until a row's first update (nil for SGD).
    public let state: Tensor?

    /// Rows this holder keeps: ⌈(rows − shardIndex) / shardCount⌉.
    public var localRows: Int { values.shape[0] }
    public var stateWidth: Int { optimizer.stateCount(width: width) }

    /// A table (or shard) whose rows are ``RowInitializer`` values of (seed, table, id).
    public init(table: Int, rows: Int, width: Int, shardIndex: Int = 0, shardCount: Int = 1, optimizer: RowOptimizer, initializer: RowInitializer) {
        precondition(shardCount >= 1 && (0..<shardCount).contains(shardIndex), "shard \(shardIndex) of \(shardCount)")
        self.table = table
        self.rows = rows
        self.width = width
        self.shardIndex = shardIndex
        self.shardCount = shardCount
        self.optimizer = optimizer
        let local = rows > shardIndex ? (rows - shardIndex + shardCount - 1) / shardCount : 0
        values = TensorAllocator.withCategory(.parameters) { Tensor(uninitializedShape: [local, width]) }
        let stateWidth = optimizer.stateCount(width: width)
        state = stateWidth == 0 ? nil : TensorAllocator.withCategory(.optimizerState) { Tensor.zeros([local, stateWidth]) }
        let pointer = values.floatPointer
        ComputePool.current.parallelFor(local, minimumChunk: 1024) { range in
            for row in range {
                initializer.fill(pointer + row * width, table: table, id: row * shardCount + shardIndex, width: width)
            }
        }
    }

    /// A dense block held as rows of width 1 (a server's chunk of the dense parameters), starting at `values`.
    public init(table: Int, denseValues: [Float], optimizer: RowOptimizer) {
        self.table = table
        rows = denseValues.count
        width = 1
        shardIndex = 0
        shardCount = 1
        self.optimizer = optimizer
        values = TensorAllocator.withCategory(.parameters) { Tensor(shape: [denseValues.count, 1], values: denseValues) }
        let stateWidth = optimizer.stateCount(width: 1)
        state = stateWidth == 0 ? nil : TensorAllocator.withCategory(.optimizerState) { Tensor.zeros([denseValues.count, stateWidth]) }
    }

    /// Throws unless every id is a row of the table held here.
    public func checkOwned(_ ids: [Int32], from sender: String) throws {
        for id in ids where id < 0 || Int(id) >= rows || Int(id) % shardCount != shardIndex {
            throw ConvoyError.invalidArgument("\(sender) asked for row \(id) of table \(table), which is not among the rows held here (table of \(rows) rows, shard \(shardIndex) of \(shardCount))")
        }
    }

    /// Copies rows `ids` into `destination` (ids.count × width floats).
    public func read(_ ids: [Int32], into destination: UnsafeMutablePointer<Float>) {
        let source = values.floatPointer, width = self.width, shards = shardCount
        for (i, id) in ids.enumerated() { (destination + i * width).update(from: source + (Int(id) / shards) * width, count: width) }
    }

    /// Applies the optimizer to rows `ids` with gradients `gradients` (ids.count × width floats) times `scale`.
    public func apply(_ ids: [Int32], gradients: UnsafePointer<Float>, scale: Float, learningRate: Float) {
        let source = values.floatPointer, width = self.width, shards = shardCount, stateWidth = self.stateWidth
        let statePointer = state?.floatPointer
        var scratch: Float = 0
        for (i, id) in ids.enumerated() {
            let row = Int(id) / shards
            withUnsafeMutablePointer(to: &scratch) { empty in
                optimizer.update(row: source + row * width, gradient: gradients + i * width, scale: scale,
                                 state: statePointer.map { $0 + row * stateWidth } ?? empty, width: width, learningRate: learningRate)
            }
        }
    }

    /// Bytes of values plus optimizer state held here.
    public var byteCount: Int { (values.count + (state?.count ?? 0)) * 4 }
}
