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
        return try CheckpointShardWriter.write(slices: try slicesThisRankWrites(), optimizerState: optimizer.stateViews(),
                                               rank: world?.rank ?? 0, of: world?.size ?? 1, into: directory)
    }

    /// The slices this rank writes: all of its own ZeRO shards, and of the slices every data-parallel replica
    /// holds alike, a share balanced by bytes (largest first, each to the replica with the fewest bytes so far,
    /// decided identically on every replica), so replicated tensors are written once and the writing is
    /// spread. The second copy of a tied weight is not written. Under tensor parallelism a parameter cut along
    /// tp is a different part on every tp rank (each writes its own, in whole-parameter coordinates); one
    /// replicated along tp is shared out over dp × tp, or, as ZeRO shards, written by tp rank 0.
    public func slicesThisRankWrites() throws -> [CheckpointSlice] {
        let group = synchronizer.dataParallelGroup
        let replicas = group?.size ?? 1, me = group?.rank ?? 0
        let tpRanks = tensorParallel?.group.size ?? 1, tpRank = tensorParallel?.group.rank ?? 0
        let slices = try checkpointSlices(synchronizer.checkpointSlices)
        func cutAlongTP(_ slice: CheckpointSlice) -> Bool { tensorParallel?.isSharded(slice.parameter) ?? false }
        var assignedOverDP = [Int](repeating: 0, count: replicas)
        var assignedOverMesh = [Int](repeating: 0, count: replicas * tpRanks)
        let ordered = slices.filter(\.isPrimaryCopy).sorted { ($0.count, $1.parameter) > ($1.count, $0.parameter) }
        return ordered.filter { slice in
            let cut = cutAlongTP(slice)
            if slice.distinctAlongDataParallel { return cut || tpRank == 0 }
            let bytes = slice.count * slice.values.dtype.byteSize
            if cut {
                let writer = assignedOverDP.indices.min { assignedOverDP[$0] < assignedOverDP[$1] }!
                assignedOverDP[writer] += bytes
                return writer == me
            }
            let writer = assignedOverMesh.indices.min { assignedOverMesh[$0] < assignedOverMesh[$1] }!
            assignedOverMesh[writer] += bytes
            return writer == me * tpRanks + tpRank
        }
    }

    /// `slices` in the coordinates of the whole parameters (tensor-parallel pieces mapped to their boxes).
    private func checkpointSlices(_ slices: [CheckpointSlice]) throws -> [CheckpointSlice] {
        try tensorParallel?.globalSlices(slices) ?? slices
    }

    /// Loads this rank's parameter values and optimizer state from a sharded checkpoint saved under any layout
    /// (no communication): each region this rank holds is read from the pieces that intersect it. Parameter
    /// shapes and coverage are checked before anything is written; errors name the file and the tensor.
    public func loadCheckpoint(from reader: ShardedCheckpointReader) throws {
        try synchronizer.finishPendingUpdates()
        let optimized = synchronizer.checkpointSlices, mapped = try checkpointSlices(optimized)
        var state = try reader.load(parametersInto: try checkpointSlices(synchronizer.residentParameterSlices), optimizerStateOf: mapped)
        synchronizer.parameterValuesLoaded()
        // Tensor-parallel padding is not stored: its optimizer state comes back as zeros in the piece's shape.
        for (piece, stored) in zip(optimized, mapped) where stored.count < piece.count {
            for (key, tensor) in state.tensors where key.hasPrefix(piece.optimizerKey + ".") && !key.dropFirst(piece.optimizerKey.count + 1).contains(".") {
                let padded = Tensor.zeros(piece.values.shape)
                withNoGrad { padded.reshaped([piece.count]).slice(axis: 0, 0..<stored.count).assign(tensor.reshaped([stored.count])) }
                state.tensors[key] = padded
            }
        }
        // A checkpoint of weights only (imported) leaves the optimizer fresh.
        if !state.tensors.isEmpty || !state.scalars.isEmpty { try optimizer.load(state) }
    }
}
