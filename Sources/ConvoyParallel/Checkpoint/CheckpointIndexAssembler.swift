import ConvoyTensor
import Foundation

/// Merges the piece lists every rank wrote (``CheckpointShardWriter``) into one ``CheckpointIndex``, checking
/// that the ranks agree on each tensor's shape and dtype and that every element of every tensor is stored
/// exactly once; the per-rank lists are removed once merged.
public enum CheckpointIndexAssembler {
    /// - Parameter writers: the ranks that wrote pieces (default: all `ranks`); under parameter servers only the
    ///   servers and the first worker do.
    public static func assemble(in directory: String, ranks: Int, writers: [Int]? = nil, step: Int, samples: Int, layout: String) throws -> CheckpointIndex {
        var tensors: [String: CheckpointIndex.Entry] = [:]
        var scalars: [String: Double]?
        let writers = writers ?? Array(0..<ranks)
        for rank in writers {
            let path = directory + "/" + CheckpointIndex.rankPiecesFileName(rank: rank, of: ranks)
            guard let data = FileManager.default.contents(atPath: path) else {
                throw ConvoyError.io("rank \(rank) wrote no piece list \(path); its part of the checkpoint is missing")
            }
            let pieces: CheckpointShardWriter.RankPieces
            do { pieces = try JSONDecoder().decode(CheckpointShardWriter.RankPieces.self, from: data) } catch {
                throw ConvoyError.malformedFile(path: path, reason: "not a piece list (\(error))")
            }
            if scalars == nil || rank == writers.first { scalars = pieces.optimizerScalars }
            for written in pieces.pieces {
                var entry = tensors[written.tensor] ?? CheckpointIndex.Entry(role: written.role, parameter: written.parameter, state: written.state,
                                                                            shape: written.shape, dtype: written.dtype, pieces: [])
                guard entry.shape == written.shape, entry.dtype == written.dtype else {
                    throw ConvoyError.invalidConfiguration("ranks disagree on tensor '\(written.tensor)': \(entry.dtype) \(entry.shape) and \(written.dtype) \(written.shape) (rank \(rank))")
                }
                entry.pieces.append(written.piece)
                tensors[written.tensor] = entry
            }
        }
        let index = CheckpointIndex(step: step, samples: samples, optimizerScalars: scalars ?? [:], layout: layout, ranks: ranks, tensors: tensors)
        try CheckpointVerifier.checkCoverage(index, source: directory)
        for rank in writers { try? FileManager.default.removeItem(atPath: directory + "/" + CheckpointIndex.rankPiecesFileName(rank: rank, of: ranks)) }
        return index
    }
}
