import ConvoyComm
import ConvoyNN
import ConvoyTensor

/// Tensor-parallel pieces in a sharded checkpoint: a rank's piece of a parameter cut along tp is, in the
/// whole parameter, one box per block (the Q, K and V of its heads for `c_attn`), minus the vocabulary padding
/// the whole parameter never had. Slices are mapped to those boxes, so a checkpoint stores whole, unpadded
/// tensors and loads into any tp (or none).
extension TensorParallelism {
    /// Whether `name` is cut along tp (so every tp rank holds a different part of it).
    public func isSharded(_ name: String) -> Bool { sharded.contains { $0.name == name } }

    /// `slices`, given in the coordinates of this rank's pieces, in the coordinates of the whole parameters.
    /// Slices of parameters that are not cut are returned as they are.
    public func globalSlices(_ slices: [CheckpointSlice]) throws -> [CheckpointSlice] {
        guard pieces == nil else {
            throw ConvoyError.invalidArgument("a checkpoint was written or read while the tensor-parallel parameters were gathered whole; release them first (ParallelRuntime.releaseFullModel)")
        }
        let entries = Dictionary(sharded.map { ($0.name, $0) }, uniquingKeysWith: { first, _ in first })
        return try slices.map { slice in
            guard let entry = entries[slice.parameter] else { return slice }
            var boxes: [TensorBox] = []
            var kept = 0, droppedSome = false
            for box in slice.boxes {
                for (global, count) in wholeBoxes(of: box, entry: entry) {
                    if let global {
                        guard !droppedSome else {
                            throw ConvoyError.invalidConfiguration("the tensor-parallel piece of \(slice.parameter) has padding before data in \(box); a padded dimension must be the outermost")
                        }
                        boxes.append(global)
                        kept += count
                    } else {
                        droppedSome = true
                    }
                }
            }
            var result = slice
            result.globalShape = entry.wholeShape
            result.boxes = boxes
            // Padding (the last rank's vocabulary rows past the real ones) is always the tail of the values.
            if kept < slice.count { result.values = slice.values.reshaped([slice.count]).slice(axis: 0, 0..<kept) }
            return result
        }
    }

    /// The boxes of the whole parameter that hold `box` of this rank's piece, in the row-major order of the
    /// box's elements, each with its element count; nil for a part that is padding.
    private func wholeBoxes(of box: TensorBox, entry: ShardedParameter) -> [(TensorBox?, Int)] {
        let dim = entry.sharding.dimension
        let block = entry.paddedExtent / entry.sharding.blocks, slice = block / group.size
        let extent = entry.wholeShape[dim]
        let low = box.offsets[dim], high = low + box.shape[dim]
        let firstBlock = low / slice, lastBlock = (high - 1) / slice
        let start = firstBlock * block + group.rank * slice + (low - firstBlock * slice)
        let valid = max(0, min(box.shape[dim], extent - start))
        if firstBlock == lastBlock && valid == box.shape[dim] {
            var mapped = box
            mapped.offsets[dim] = start
            return [(mapped, box.count)]
        }
        // Not one contiguous run of the whole parameter: split where the order of elements allows, the
        // outermost dimension first (one box per index), then along the cut dimension at block boundaries.
        if let outer = (0..<dim).first(where: { box.shape[$0] > 1 }) {
            return (0..<box.shape[outer]).flatMap { index -> [(TensorBox?, Int)] in
                var part = box
                part.offsets[outer] += index
                part.shape[outer] = 1
                return wholeBoxes(of: part, entry: entry)
            }
        }
        if firstBlock != lastBlock {
            return (firstBlock...lastBlock).flatMap { blockIndex -> [(TensorBox?, Int)] in
                var part = box
                part.offsets[dim] = max(low, blockIndex * slice)
                part.shape[dim] = min(high, (blockIndex + 1) * slice) - part.offsets[dim]
                return wholeBoxes(of: part, entry: entry)
            }
        }
        // One block, partly padding: the data rows, then the padding rows.
        let rowElements = box.count / box.shape[dim]
        var data = box, padding = box
        data.offsets[dim] = start
        data.shape[dim] = valid
        padding.shape[dim] = box.shape[dim] - valid
        return (valid > 0 ? [(data, valid * rowElements)] : []) + [(nil, padding.count)]
    }
}
