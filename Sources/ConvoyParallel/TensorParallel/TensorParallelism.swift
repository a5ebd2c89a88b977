import ConvoyComm
import ConvoyNN
import ConvoyTensor

/// Tensor parallelism of one model on one rank: the model's declared ``ConvoyNN/TensorParallelSharding``s
/// applied to its parameters (each replaced by this rank's piece and placed Shard(dim) along tp), and the
/// ``TensorParallelEngine`` that deduces every activation's placement from them during the forward.
///
/// Every rank builds the whole model from the same seed first, so the pieces are exactly the single-process
/// weights. Exports see whole, unpadded tensors: ``gatherWholeParameters()`` assembles them (one all-gather per
/// parameter over tp) and ``releaseWholeParameters(copyingBack:)`` returns to the pieces.
public final class TensorParallelism {
    /// One sharded parameter.
    struct ShardedParameter {
        let name: String
        let parameter: Parameter
        let sharding: TensorParallelSharding
        /// The whole (unpadded) shape.
        let wholeShape: [Int]
        /// The padded extent of the cut dimension.
        let paddedExtent: Int
    }

    public let group: any ProcessGroup
    public let engine: TensorParallelEngine
    let sharded: [ShardedParameter]
    /// While whole: each sharded parameter's piece (a view of the memory its synchronizer knows).
    private(set) var pieces: [Tensor]?

    /// Cuts `model`'s parameters for this rank of `group` (every rank of the group calls it; no communication).
    ///
    /// - Throws: ``ConvoyTensor/ConvoyError/invalidConfiguration(_:)`` when a cut dimension does not divide into
    ///   the blocks and ranks.
    public init(model: any LanguageModel, group: any ProcessGroup, sequenceParallel: Bool) throws {
        self.group = group
        let ranks = group.size
        let shardings = model.tensorParallelShardings
        var sharded: [ShardedParameter] = []
        for (name, parameter) in model.namedParameters() {
            guard let sharding = shardings[name] else { continue }
            let extent = parameter.shape[sharding.dimension]
            let padded = sharding.padded ? (extent + ranks - 1) / ranks * ranks : extent
            guard padded % (sharding.blocks * ranks) == 0 else {
                throw ConvoyError.invalidConfiguration("\(name) has \(extent) along dimension \(sharding.dimension), which does not divide into \(sharding.blocks) block(s) × tp \(ranks); choose a tp that divides it")
            }
            let piece = TensorAllocator.withCategory(.parameters) {
                Self.piece(of: parameter.detached(), sharding: sharding, paddedExtent: padded, rank: group.rank, ranks: ranks)
            }
            sharded.append(ShardedParameter(name: name, parameter: parameter, sharding: sharding, wholeShape: parameter.shape, paddedExtent: padded))
            parameter.replaceValue(with: piece)
            parameter.placement.axes[MeshAxis.tp.rawValue] = .shard(dim: sharding.dimension)
        }
        self.sharded = sharded
        engine = TensorParallelEngine(group: group, sequenceParallel: sequenceParallel, validClasses: model.shape.vocabularySize)
        engine.attach(to: model)
    }

    /// Runs `body` (a forward and backward) with this rank's operators deduced along tp.
    public func run<Result>(_ body: () throws -> Result) throws -> Result {
        let result = try PlacementDeduction.with(engine, body)
        try engine.checkFailure()
        return result
    }

    /// Makes every sharded parameter whole and unpadded on every rank of the group (collective), placed
    /// Replicate, for evaluation or export. Parameters whose memory this rank gave away (another pipeline
    /// stage's) stay as they are — the same on every rank of the group.
    public func gatherWholeParameters() throws {
        guard pieces == nil else { return }
        var saved: [Tensor] = []
        for entry in sharded {
            let piece = entry.parameter.detached()
            saved.append(piece)
            guard !piece.storage.isReleased else { continue }
            let gathered = try Redistribution.gather(piece, dim: 0, group: group)
            entry.parameter.replaceValue(with: Self.assemble(gathered, entry: entry, ranks: group.size))
            entry.parameter.placement.axes[MeshAxis.tp.rawValue] = nil
        }
        pieces = saved
    }

    /// Gives every sharded parameter whole-shaped memory without communication (contents undefined until
    /// written): before loading whole tensors into the model.
    public func allocateWholeParameters() {
        guard pieces == nil else { return }
        pieces = sharded.map { entry in
            let piece = entry.parameter.detached()
            entry.parameter.replaceValue(with: Tensor.zeros(entry.wholeShape))
            entry.parameter.placement.axes[MeshAxis.tp.rawValue] = nil
            return piece
        }
    }

    /// Returns to this rank's pieces; with `copyingBack`, each piece first takes its values from the whole
    /// parameter (after a checkpoint was loaded into it).
    public func releaseWholeParameters(copyingBack: Bool = false) {
        guard let pieces else { return }
        for (entry, piece) in zip(sharded, pieces) {
            if copyingBack && !piece.storage.isReleased && !entry.parameter.storage.isReleased {
                let values = Self.piece(of: entry.parameter.detached(), sharding: entry.sharding, paddedExtent: entry.paddedExtent, rank: group.rank, ranks: group.size)
                withNoGrad { piece.assign(values) }
            }
            entry.parameter.replaceValue(with: piece)
            entry.parameter.placement.axes[MeshAxis.tp.rawValue] = .shard(dim: entry.sharding.dimension)
        }
        self.pieces = nil
    }

    /// Per-rank parameter elements: the sharded ones' pieces plus everything replicated.
    public static func pieceShape(of shape: [Int], sharding: TensorParallelSharding, ranks: Int) -> [Int] {
        var result = shape
        let extent = shape[sharding.dimension]
        result[sharding.dimension] = (sharding.padded ? (extent + ranks - 1) / ranks * ranks : extent) / ranks
        return result
    }

    // MARK: Cutting and assembling

    /// Rank `rank`'s piece of `whole`: along the cut dimension (padded with zeros to `paddedExtent`), piece
    /// `rank` of each block, blocks in order.
    static func piece(of whole: Tensor, sharding: TensorParallelSharding, paddedExtent: Int, rank: Int, ranks: Int) -> Tensor {
        let dim = sharding.dimension
        let source = whole.contiguous()
        let extent = whole.shape[dim]
        let outer = Shape.count(Array(whole.shape[..<dim])), inner = Shape.count(Array(whole.shape[(dim + 1)...]))
        let block = paddedExtent / sharding.blocks, slice = block / ranks
        var shape = whole.shape
        shape[dim] = slice * sharding.blocks
        let result = Tensor.zeros(shape)
        let sp = source.floatPointer, rp = result.floatPointer
        for o in 0..<outer {
            for b in 0..<sharding.blocks {
                for j in 0..<slice {
                    let row = b * block + rank * slice + j
                    guard row < extent else { continue }
                    (rp + (o * shape[dim] + b * slice + j) * inner).update(from: sp + (o * extent + row) * inner, count: inner)
                }
            }
        }
        return result
    }

    /// The whole unpadded parameter from the pieces of all ranks concatenated along dimension 0 (an all-gather).
    static func assemble(_ gathered: Tensor, entry: ShardedParameter, ranks: Int) -> Tensor {
        let dim = entry.sharding.dimension, whole = entry.wholeShape
        let extent = whole[dim]
        let outer = Shape.count(Array(whole[..<dim])), inner = Shape.count(Array(whole[(dim + 1)...]))
        let block = entry.paddedExtent / entry.sharding.blocks, slice = block / ranks
        let pieceRows = slice * entry.sharding.blocks
        let pieceCount = outer * pieceRows * inner
        let result = Tensor(uninitializedShape: whole)
        let gp = gathered.floatPointer, rp = result.floatPointer
        for r in 0..<ranks {
            for o in 0..<outer {
                for b in 0..<entry.sharding.blocks {
                    for j in 0..<slice {
                        let row = b * block + r * slice + j
                        guard row < extent else { continue }
                        (rp + (o * extent + row) * inner).update(from: gp + r * pieceCount + (o * pieceRows + b * slice + j) * inner, count: inner)
                    }
                }
            }
        }
        return result
    }
}
