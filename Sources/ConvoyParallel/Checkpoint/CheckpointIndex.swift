import ConvoyTensor
import Foundation

/// The global index of a sharded checkpoint (`index.json`), written last: for every tensor its global shape,
/// dtype, what it is (a parameter, an optimizer state of a parameter, a master weight) and the pieces that
/// hold it — each a box of the global tensor in one rank file, with its byte range there and a checksum.
///
/// Everything is in canonical form: tensors have their parameter's global shape, whatever layout wrote them
/// (ZeRO's flat shards are stored as the boxes of the global tensor they cover; a tensor-parallel shard would
/// be one box), so any layout can find the bytes it needs by intersecting boxes.
public struct CheckpointIndex: Codable, Equatable, Sendable {
    /// What a tensor of the checkpoint is.
    public enum Role: String, Codable, Sendable {
        /// A model parameter's values (in the training dtype).
        case parameter
        /// An optimizer state of a parameter (`state` names it: `exp_avg`, `momentum_buffer`, …).
        case optimizer
        /// The fp32 master copy of a parameter trained in lower precision.
        case master
    }

    /// One stored piece of a tensor.
    public struct Piece: Codable, Equatable, Sendable {
        /// The rank file holding it, relative to the checkpoint directory.
        public var file: String
        /// Its name inside that safetensors file.
        public var key: String
        /// The box of the global tensor it holds (its data is the box, row-major).
        public var box: TensorBox
        /// Its bytes in the file (absolute offsets).
        public var byteStart: Int
        public var byteEnd: Int
        /// ``PieceChecksum`` of those bytes.
        public var checksum: String
        /// When set, the piece holds rows `box.offsets[0] + i·rowStride` (i < `box.shape[0]`) of the tensor
        /// rather than the box's consecutive rows — a parameter server's shard of a table (rows id mod S), stored
        /// as it lies in the server's memory. Absent for a plain box.
        public var rowStride: Int?

        /// The rows of the tensor the piece holds.
        public var rows: RowProgression {
            RowProgression(first: box.offsets.first ?? 0, stride: rowStride ?? 1, count: box.shape.first ?? 1)
        }

        /// The box of the tensor that the piece's row `i` is (one row of it; the whole box for a scalar).
        public func rowBox(_ i: Int) -> TensorBox {
            guard !box.offsets.isEmpty else { return box }
            return TensorBox(offsets: [rows.row(i)] + box.offsets.dropFirst(), shape: [1] + box.shape.dropFirst())
        }

        /// Elements of one of its rows.
        public var rowElements: Int { box.shape.dropFirst().reduce(1, *) }

        /// Whether the piece lies inside a tensor of shape `shape`.
        public func isInside(_ shape: [Int]) -> Bool {
            guard let stride = rowStride else { return box.isInside(shape) }
            guard stride >= 1, !shape.isEmpty, box.shape[0] >= 0 else { return false }
            return TensorBox(offsets: box.offsets, shape: [rows.end - rows.first] + box.shape.dropFirst()).isInside(shape)
        }

        /// Elements of `region` the piece holds.
        public func overlapCount(with region: TensorBox) -> Int {
            guard rowStride != nil else { return box.intersection(region)?.count ?? 0 }
            guard let across = rowBox(0).intersection(TensorBox(offsets: [rows.first] + region.offsets.dropFirst(), shape: [1] + region.shape.dropFirst())) else { return 0 }
            let regionRows = region.offsets[0]..<(region.offsets[0] + region.shape[0])
            return rows.positions(in: regionRows).count * across.count
        }

        /// Whether the two pieces hold a common element.
        public func overlaps(_ other: Piece) -> Bool {
            guard rowStride != nil || other.rowStride != nil else { return box.intersection(other.box) != nil }
            let across = TensorBox(offsets: Array(box.offsets.dropFirst()), shape: Array(box.shape.dropFirst()))
                .intersection(TensorBox(offsets: Array(other.box.offsets.dropFirst()), shape: Array(other.box.shape.dropFirst())))
            return across != nil && rows.intersects(other.rows)
        }
    }

    /// One tensor of the checkpoint.
    public struct Entry: Codable, Equatable, Sendable {
        public var role: Role
        /// The parameter it belongs to (its own name for a parameter).
        public var parameter: String
        /// The optimizer state's name (`exp_avg`, …); nil for parameters and master weights.
        public var state: String?
        public var shape: [Int]
        public var dtype: DType
        public var pieces: [Piece]

        public var count: Int { shape.reduce(1, *) }
    }

    public static let fileName = "index.json"
    public static let formatName = "convoy-sharded-checkpoint"

    public var format = CheckpointIndex.formatName
    public var version = 1
    public var checksumAlgorithm = PieceChecksum.algorithm
    /// Optimizer steps completed.
    public var step: Int
    /// The global sample cursor: training examples consumed so far (the data position; the LR schedule
    /// follows it).
    public var samples: Int
    /// The optimizer's scalar state (Adam's `step`).
    public var optimizerScalars: [String: Double]
    /// The layout that wrote the checkpoint, for people (`convoy checkpoint info`); loading never needs it.
    public var layout: String
    /// Number of rank files.
    public var ranks: Int
    /// Every tensor by name (see ``name(of:state:role:)``).
    public var tensors: [String: Entry]

    public init(step: Int, samples: Int, optimizerScalars: [String: Double], layout: String, ranks: Int, tensors: [String: Entry]) {
        self.step = step
        self.samples = samples
        self.optimizerScalars = optimizerScalars
        self.layout = layout
        self.ranks = ranks
        self.tensors = tensors
    }

    /// The index name of a parameter (its own name), its optimizer state (`optimizer/<state>/<parameter>`)
    /// or its master weight (`master/<parameter>`).
    public static func name(of parameter: String, role: Role, state: String? = nil) -> String {
        switch role {
        case .parameter: return parameter
        case .optimizer: return "optimizer/\(state!)/\(parameter)"
        case .master: return "master/\(parameter)"
        }
    }

    /// The optimizer state names stored for `parameter`.
    public func optimizerStates(of parameter: String) -> [String] {
        tensors.values.filter { $0.role == .optimizer && $0.parameter == parameter }.compactMap(\.state).sorted()
    }

    /// The tensors of `role`, by name, sorted.
    public func names(of role: Role) -> [String] { tensors.filter { $0.value.role == role }.keys.sorted() }

    /// Total bytes of every piece.
    public var storedBytes: Int { tensors.values.reduce(0) { $0 + $1.pieces.reduce(0) { $0 + $1.byteEnd - $1.byteStart } } }

    /// The index as JSON (sorted keys: equal indexes give equal bytes).
    public func encoded() throws -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return try encoder.encode(self)
    }

    /// Reads `directory`'s index.
    ///
    /// - Throws: ``ConvoyError/malformedFile(path:reason:)`` when it is missing (the save did not finish) or not
    ///   an index this Convoy reads.
    public static func read(from directory: String) throws -> CheckpointIndex {
        let path = directory + "/" + fileName
        guard let data = FileManager.default.contents(atPath: path) else {
            throw ConvoyError.malformedFile(path: path, reason: "missing: \(directory) is not a complete sharded Convoy checkpoint (the index is written last, so a save that did not finish has none)")
        }
        let index: CheckpointIndex
        do { index = try JSONDecoder().decode(CheckpointIndex.self, from: data) } catch {
            throw ConvoyError.malformedFile(path: path, reason: "not a checkpoint index (\(error))")
        }
        guard index.format == formatName, index.version == 1 else {
            throw ConvoyError.incompatible("\(path) is \(index.format) version \(index.version); this Convoy reads \(formatName) version 1")
        }
        for (name, entry) in index.tensors {
            for piece in entry.pieces {
                guard piece.isInside(entry.shape), piece.byteEnd - piece.byteStart == piece.box.count * entry.dtype.byteSize,
                      !piece.file.contains("/"), piece.byteStart >= 0 else {
                    throw ConvoyError.malformedFile(path: path, reason: "tensor '\(name)' has a piece \(piece.box) in \(piece.file) that does not fit its shape \(entry.shape) or byte range")
                }
            }
        }
        return index
    }

    /// The file each rank's pieces go to.
    public static func rankFileName(rank: Int, of ranks: Int) -> String {
        "rank-\(String(format: "%05d", rank))-of-\(String(format: "%05d", ranks)).safetensors"
    }

    /// The piece list a rank writes beside its file, which the leader merges into the index.
    public static func rankPiecesFileName(rank: Int, of ranks: Int) -> String {
        "rank-\(String(format: "%05d", rank))-of-\(String(format: "%05d", ranks)).pieces.json"
    }
}
