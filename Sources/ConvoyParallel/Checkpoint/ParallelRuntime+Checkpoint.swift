import ConvoyComm
import ConvoyNN
import ConvoyTensor
import Foundation

/// Sharded checkpoints of a running plan: every rank writes what it owns and reads what it needs, so no
/// rank ever holds the whole model to save or load it, and a checkpoint saved under one layout loads under
/// any other (the pieces are boxes of the global tensors, whatever wrote them).
extension ParallelRuntime {
    /// Writes this rank's part of a checkpoint into `directory` (no communication; every rank calls it, then
    /// the leader assembles the index with ``CheckpointIndexAssembler``): the parameter values and optimizer
    /// states of the slices ``slicesThisRankWrites()`` picks, written straight from where they live. Returns
    /// the bytes written.
    @discardableResult
    public func writeCheckpointShard(into directory: String) throws -> Int {
        try synchronizer.finishPendingUpdates()
        return try CheckpointShardWriter.write(slices: slicesThisRankWrites(), optimizerState: optimizer.stateViews(),
                                               rank: world?.rank ?? 0, of: world?.size ?? 1, into: directory)
    }

    /// The slices this rank writes: all of its own ZeRO shards, and of the slices every data-parallel replica
    /// holds alike, a share balanced by bytes (largest first, each to the replica with the fewest bytes so far,
    /// decided identically on every replica), so replicated tensors are written once and the writing is
    /// spread. The second copy of a tied weight is not written.
    public func slicesThisRankWrites() -> [CheckpointSlice] {
        let group = synchronizer.dataParallelGroup
        let replicas = group?.size ?? 1, me = group?.rank ?? 0
        var assigned = [Int](repeating: 0, count: replicas)
        let ordered = synchronizer.checkpointSlices.filter(\.isPrimaryCopy).sorted { ($0.count, $1.parameter) > ($1.count, $0.parameter) }
        return ordered.filter { slice in
            if slice.distinctAlongDataParallel { return true }
            let writer = assigned.indices.min { assigned[$0] < assigned[$1] }!
            assigned[writer] += slice.count * slice.values.dtype.byteSize
            return writer == me
        }
    }

    /// Loads this rank's parameter values and optimizer state from a sharded checkpoint saved under any layout
    /// (no communication): each region this rank holds is read from the pieces that intersect it. Parameter
    /// shapes and coverage are checked before anything is written; errors name the file and the tensor.
    public func loadCheckpoint(from reader: ShardedCheckpointReader) throws {
        try synchronizer.finishPendingUpdates()
        let state = try reader.load(parametersInto: synchronizer.residentParameterSlices, optimizerStateOf: synchronizer.checkpointSlices)
        // A checkpoint of weights only (imported) leaves the optimizer fresh.
        if !state.tensors.isEmpty || !state.scalars.isEmpty { try optimizer.load(state) }
    }
}
