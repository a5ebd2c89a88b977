import ConvoyNN
import ConvoyTensor
import Foundation

/// Writes one rank's pieces of a sharded checkpoint: one safetensors file of the pieces (each written straight
/// from the tensor that holds it, checksummed on the way) and the list of those pieces, which the leader
/// merges into the ``CheckpointIndex`` once every rank has written (``CheckpointIndexAssembler``).
public enum CheckpointShardWriter {
    /// A piece to write: a box of a global tensor and the tensor holding its elements (row-major).
    public struct Source {
        public var tensor: String
        public var role: CheckpointIndex.Role
        public var parameter: String
        public var state: String?
        public var globalShape: [Int]
        public var box: TensorBox
        public var data: Tensor
        /// Set for a row-strided piece (``CheckpointIndex/Piece/rowStride``): `data` holds rows
        /// `box.offsets[0] + i·rowStride`.
        public var rowStride: Int?

        public init(tensor: String, role: CheckpointIndex.Role, parameter: String, state: String?, globalShape: [Int], box: TensorBox, data: Tensor,
                    rowStride: Int? = nil) {
            self.tensor = tensor
            self.role = role
            self.parameter = parameter
            self.state = state
            self.globalShape = globalShape
            self.box = box
            self.data = data
            self.rowStride = rowStride
        }
    }

    /// A written piece as the rank's piece list records it.
    public struct WrittenPiece: Codable {
        public var tensor: String
        public var role: CheckpointIndex.Role
        public var parameter: String
        public var state: String?
        public var shape: [Int]
        public var dtype: DType
        public var piece: CheckpointIndex.Piece
    }

    /// What a rank's piece list holds.
    public struct RankPieces: Codable {
        public var pieces: [WrittenPiece]
        /// The rank's optimizer scalars (the same on every rank).
        public var optimizerScalars: [String: Double]
    }

    /// The pieces of `slice` (its values, or one of its optimizer states held in `data`, which is laid out
    /// like the values): one per box.
    public static func sources(of slice: CheckpointSlice, role: CheckpointIndex.Role, state: String? = nil, data: Tensor) -> [Source] {
        var start = 0
        let flat = data.isContiguous ? data : data.contiguous()
        return slice.boxes.map { box in
            defer { start += box.count }
            return Source(tensor: CheckpointIndex.name(of: slice.parameter, role: role, state: state), role: role, parameter: slice.parameter, state: state,
                          globalShape: slice.globalShape, box: box,
                          data: Tensor(storage: flat.storage, shape: box.shape, offset: flat.offset + start))
        }
    }

    /// Writes the values of `slices` and their optimizer states (from `optimizerState`, keyed
    /// `<optimizerKey>.<state>` and laid out like the values) as rank `rank`'s file and piece list in
    /// `directory`; returns the bytes written.
    @discardableResult
    public static func write(slices: [CheckpointSlice], optimizerState: OptimizerState, rank: Int, of ranks: Int, into directory: String) throws -> Int {
        var statesByKey: [String: [(name: String, tensor: Tensor)]] = [:]
        for (key, tensor) in optimizerState.tensors {
            guard let dot = key.lastIndex(of: ".") else { continue }
            statesByKey[String(key[..<dot]), default: []].append((String(key[key.index(after: dot)...]), tensor))
        }
        var sources: [Source] = []
        for slice in slices {
            sources += Self.sources(of: slice, role: .parameter, data: slice.values)
            if let master = slice.master { sources += Self.sources(of: slice, role: .master, data: master) }
            for (name, tensor) in (statesByKey[slice.optimizerKey] ?? []).sorted(by: { $0.name < $1.name }) {
                sources += Self.sources(of: slice, role: .optimizer, state: name, data: tensor)
            }
        }
        return try write(sources, optimizerScalars: optimizerState.scalars, rank: rank, of: ranks, into: directory)
    }

    /// Writes `sources` as rank `rank`'s file and piece list in `directory`; returns the bytes written.
    @discardableResult
    public static func write(_ sources: [Source], optimizerScalars: [String: Double], rank: Int, of ranks: Int, into directory: String) throws -> Int {
        let file = CheckpointIndex.rankFileName(rank: rank, of: ranks)
        let entries = sources.map { SafeTensorsFileWriter.Entry(name: "\($0.tensor)@\($0.box)", dtype: $0.data.dtype, shape: $0.box.shape) }
        var checksums = [String](repeating: "", count: sources.count)
        let ranges = try SafeTensorsFileWriter.write(entries, metadata: ["format": CheckpointIndex.formatName], to: directory + "/" + file,
                                                     tensor: { sources[$0].data }, written: { checksums[$0] = PieceChecksum.hex($1) })
        let pieces = sources.indices.map { index in
            let source = sources[index]
            return WrittenPiece(tensor: source.tensor, role: source.role, parameter: source.parameter, state: source.state,
                                shape: source.globalShape, dtype: source.data.dtype,
                                piece: CheckpointIndex.Piece(file: file, key: entries[index].name, box: source.box, byteStart: ranges[index].lowerBound,
                                                             byteEnd: ranges[index].upperBound, checksum: checksums[index], rowStride: source.rowStride))
        }
        try AtomicFile.write(try JSONEncoder().encode(RankPieces(pieces: pieces, optimizerScalars: optimizerScalars)),
                             to: directory + "/" + CheckpointIndex.rankPiecesFileName(rank: rank, of: ranks))
        return ranges.last?.upperBound ?? 0
    }
}
