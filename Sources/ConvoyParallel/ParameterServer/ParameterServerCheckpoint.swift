import ConvoyComm
import ConvoyNN
import ConvoyTensor
import Foundation

/// How the CTR model's parameter-server state goes into a sharded checkpoint (``CheckpointIndex``): every
/// server writes its own rank file, the first worker writes what the workers hold, and the index lists every
/// tensor in whole-table coordinates, so `convoy checkpoint info/verify` read it like any other and any
/// number of servers (or one process) loads it.
///
/// - A table is the parameter `tables.<t>.weight` of shape [rows, width]. Server s of S holds rows id ≡ s
///   (mod S), which are not a box of the table: it writes them as one row-strided piece
///   (``CheckpointIndex/Piece/rowStride`` S, first row s), straight from its memory. Its lazy per-row
///   optimizer state is `optimizer/row_state/tables.<t>.weight`, [rows, state width], pieced alike.
/// - A dense parameter keeps its model name and shape. On the servers (`--comm ps`) each holds a chunk of the
///   concatenated dense parameters (``ChunkLayout``), written as the boxes of each parameter the chunk covers
///   (as ZeRO shards are); on the workers (hybrid) the first worker writes it whole. Its row-wise optimizer
///   state is `optimizer/row_state/<name>`, [elements, state width].
public enum ParameterServerCheckpoint {
    /// The optimizer state name of the row-wise rules (``RowOptimizer``).
    public static let rowState = "row_state"

    /// The index name of table `table`.
    public static func tableName(_ table: Int) -> String { "tables.\(table).weight" }

    /// A dense parameter as the checkpoint stores it.
    public struct DenseParameter: Sendable {
        public var name: String
        public var shape: [Int]
        public var count: Int { shape.reduce(1, *) }

        public init(name: String, shape: [Int]) {
            self.name = name
            self.shape = shape
        }
    }

    /// The pieces of `tables` (whole tables, or one server's shards as row-strided pieces) and their row state.
    public static func sources(tables: [SparseTable]) -> [CheckpointShardWriter.Source] {
        var sources: [CheckpointShardWriter.Source] = []
        for table in tables where table.localRows > 0 {
            let name = tableName(table.table), stride = table.shardCount > 1 ? table.shardCount : nil
            sources.append(.init(tensor: name, role: .parameter, parameter: name, state: nil, globalShape: [table.rows, table.width],
                                 box: TensorBox(offsets: [table.shardIndex, 0], shape: [table.localRows, table.width]), data: table.values, rowStride: stride))
            if let state = table.state {
                sources.append(.init(tensor: CheckpointIndex.name(of: name, role: .optimizer, state: rowState), role: .optimizer, parameter: name, state: rowState,
                                     globalShape: [table.rows, table.stateWidth], box: TensorBox(offsets: [table.shardIndex, 0], shape: [table.localRows, table.stateWidth]),
                                     data: state, rowStride: stride))
            }
        }
        return sources
    }

    /// The pieces of elements `range` of the concatenated dense `parameters` — a server's chunk, held in
    /// `values` (`range.count` floats) and `state` ([range.count, state width], nil for SGD).
    public static func sources(dense parameters: [DenseParameter], range: Range<Int>, values: Tensor, state: Tensor?) -> [CheckpointShardWriter.Source] {
        var sources: [CheckpointShardWriter.Source] = []
        forEachOverlap(parameters, range) { parameter, local, offset in
            let view = Tensor(storage: values.storage, shape: [local.count], offset: values.offset + offset)
            let slice = CheckpointSlice(parameter: parameter.name, globalShape: parameter.shape, boxes: TensorBox.boxes(coveringFlat: local, of: parameter.shape),
                                        values: view, optimizerKey: parameter.name, isPrimaryCopy: true, distinctAlongDataParallel: true)
            sources += CheckpointShardWriter.sources(of: slice, role: .parameter, data: view)
            if let state {
                let width = state.shape[1]
                sources.append(.init(tensor: CheckpointIndex.name(of: parameter.name, role: .optimizer, state: rowState), role: .optimizer, parameter: parameter.name,
                                     state: rowState, globalShape: [parameter.count, width], box: TensorBox(offsets: [local.lowerBound, 0], shape: [local.count, width]),
                                     data: Tensor(storage: state.storage, shape: [local.count, width], offset: state.offset + offset * width)))
            }
        }
        return sources
    }

    /// The pieces of whole dense parameters a worker holds, with their row state (``DenseRowOptimizer``'s, nil
    /// entries for SGD).
    public static func sources(dense parameters: [(name: String, parameter: Parameter)], states: [Tensor?]) -> [CheckpointShardWriter.Source] {
        var sources: [CheckpointShardWriter.Source] = []
        for (index, (name, parameter)) in parameters.enumerated() {
            sources += CheckpointShardWriter.sources(of: CheckpointSlice(whole: parameter, name: name), role: .parameter, data: parameter)
            if index < states.count, let state = states[index] {
                sources.append(.init(tensor: CheckpointIndex.name(of: name, role: .optimizer, state: rowState), role: .optimizer, parameter: name, state: rowState,
                                     globalShape: state.shape, box: TensorBox(whole: state.shape), data: state))
            }
        }
        return sources
    }

    /// Fills `tables` (whole tables or one server's shards) and their row state from a checkpoint written by any
    /// number of servers (or one process).
    public static func load(tables: [SparseTable], from reader: ShardedCheckpointReader) throws {
        for table in tables {
            let name = tableName(table.table)
            let rows = RowProgression(first: table.shardIndex, stride: table.shardCount, count: table.localRows)
            try reader.read(name, shape: [table.rows, table.width], rows: rows, into: table.values)
            guard let state = table.state else { continue }
            try reader.read(CheckpointIndex.name(of: name, role: .optimizer, state: rowState), shape: [table.rows, table.stateWidth], rows: rows, into: state)
        }
    }

    /// Fills a server's chunk `range` of the concatenated dense `parameters` (`values`: range.count floats;
    /// `state`: [range.count, state width]) from a checkpoint of any layout.
    public static func load(dense parameters: [DenseParameter], range: Range<Int>, values: Tensor, state: Tensor?, from reader: ShardedCheckpointReader) throws {
        try forEachOverlap(parameters, range) { parameter, local, offset in
            let view = Tensor(storage: values.storage, shape: [local.count], offset: values.offset + offset)
            try reader.read(parameter.name, shape: parameter.shape, boxes: TensorBox.boxes(coveringFlat: local, of: parameter.shape), into: view)
            try FiniteValues.check(view, name: parameter.name, in: reader.directory)
            if let state {
                let width = state.shape[1]
                try reader.read(CheckpointIndex.name(of: parameter.name, role: .optimizer, state: rowState), shape: [parameter.count, width],
                                boxes: [TensorBox(offsets: [local.lowerBound, 0], shape: [local.count, width])],
                                into: Tensor(storage: state.storage, shape: [local.count, width], offset: state.offset + offset * width))
            }
        }
    }

    /// Fills whole dense parameters a worker holds, and their row state, from a checkpoint of any layout.
    public static func load(dense parameters: [(name: String, parameter: Parameter)], states: [Tensor?], from reader: ShardedCheckpointReader) throws {
        for (index, (name, parameter)) in parameters.enumerated() {
            let whole = Tensor(uninitializedShape: parameter.shape)
            try reader.read(name, shape: parameter.shape, boxes: [TensorBox(whole: parameter.shape)], into: whole)
            try FiniteValues.check(whole, name: name, in: reader.directory)
            withExtendedLifetime(whole) { parameter.contiguousFloats.update(from: whole.floatPointer, count: parameter.count) }
            if index < states.count, let state = states[index] {
                try reader.read(CheckpointIndex.name(of: name, role: .optimizer, state: rowState), shape: state.shape, boxes: [TensorBox(whole: state.shape)], into: state)
            }
        }
    }

    /// Calls `body(parameter, its elements in range, their offset from range's start)` for every parameter that
    /// elements `range` of the concatenation of `parameters` meet.
    private static func forEachOverlap(_ parameters: [DenseParameter], _ range: Range<Int>, _ body: (DenseParameter, Range<Int>, Int) throws -> Void) rethrows {
        var start = 0
        for parameter in parameters {
            defer { start += parameter.count }
            let low = max(start, range.lowerBound), high = min(start + parameter.count, range.upperBound)
            guard low < high else { continue }
            try body(parameter, (low - start)..<(high - start), low - range.lowerBound)
        }
    }
}
