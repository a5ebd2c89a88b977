import ConvoyTensor
import Foundation

/// Checks a sharded checkpoint completely (`convoy checkpoint verify`): every piece's bytes against its
/// checksum, and every element of every tensor stored exactly once.
public enum CheckpointVerifier {
    /// What a verification saw.
    public struct Report: Sendable {
        public var tensors: Int
        public var pieces: Int
        public var bytes: Int
        public var files: Int
    }

    /// Throws, naming the tensor, unless the pieces of every tensor in `index` tile it exactly (no element
    /// missing, none stored twice). Reads no data.
    public static func checkCoverage(_ index: CheckpointIndex, source: String) throws {
        for name in index.tensors.keys.sorted() {
            let entry = index.tensors[name]!
            let stored = entry.pieces.reduce(0) { $0 + $1.box.count }
            for (i, piece) in entry.pieces.enumerated() {
                guard piece.isInside(entry.shape) else {
                    throw ConvoyError.malformedFile(path: source, reason: "tensor '\(name)' has a piece \(piece.box) in \(piece.file) outside its shape \(entry.shape)")
                }
                for other in entry.pieces[(i + 1)...] where piece.overlaps(other) {
                    throw ConvoyError.malformedFile(path: source, reason: "tensor '\(name)' stores some elements twice: pieces \(piece.box)\(piece.rowStride.map { " (every \($0)th row)" } ?? "") in \(piece.file) and \(other.box)\(other.rowStride.map { " (every \($0)th row)" } ?? "") in \(other.file) overlap")
                }
            }
            guard stored == entry.count else {
                throw ConvoyError.malformedFile(path: source, reason: "does not cover tensor '\(name)': its pieces hold \(stored) of its \(entry.count) elements")
            }
        }
    }

    /// Verifies the checkpoint in `directory`: coverage, then every piece's checksum.
    public static func verify(directory: String) throws -> Report {
        let reader = try ShardedCheckpointReader(directory: directory)
        let index = reader.index
        try checkCoverage(index, source: directory + "/" + CheckpointIndex.fileName)
        var pieces = 0, files = Set<String>()
        for name in index.tensors.keys.sorted() {
            let entry = index.tensors[name]!
            for piece in entry.pieces {
                _ = try reader.readBytes(of: piece, tensor: name, elements: 0..<piece.box.count, elementSize: entry.dtype.byteSize, verifying: true)
                pieces += 1
                files.insert(piece.file)
            }
        }
        return Report(tensors: index.tensors.count, pieces: pieces, bytes: index.storedBytes, files: files.count)
    }
}
