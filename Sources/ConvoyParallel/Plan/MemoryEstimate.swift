import ConvoyNN
import ConvoyTensor
import Foundation

/// What one process needs at least during a training step, estimated from the plan before the model or any
/// tensor exists, so that a run that cannot fit is refused with a message instead of failing an allocation
/// (or being killed by the kernel) minutes later.
///
/// The estimate is a lower bound: fp32 parameters, gradients and optimizer state after ZeRO sharding (DESIGN.md
/// §7) — and, in bf16, the fp32 master weights kept apart from the compute copies — plus the activations one micro-batch keeps for backward on this rank's layers (Korthikanti et al.'s
/// per-layer count, doubled for fp32, and the logits on the last stage). Workspace, the allocator's cache and
/// further stashed pipeline micro-batches come on top. Arithmetic is in `Double`, so no user-given size can
/// overflow it.
public struct MemoryEstimate: Sendable, Equatable {
    /// Bytes of parameters, gradients and optimizer state one rank holds.
    public private(set) var stateBytesPerRank: Double
    /// Bytes of activations one micro-batch keeps for backward on one rank.
    public let activationBytesPerRank: Double
    /// Ranks that share this process's memory (every rank of the Local backend; one under MPI).
    public let ranksInProcess: Int

    /// The least this process needs.
    public var bytesPerProcess: Double { Double(ranksInProcess) * (stateBytesPerRank + activationBytesPerRank) }

    /// Estimates a run of `plan` with `optimizerStateBytesPerParameter` bytes of optimizer state per parameter
    /// and `microBatchSize` sequences per micro-batch, `ranksInProcess` ranks sharing the process.
    public init(plan: ParallelPlan, optimizerStateBytesPerParameter: Int, microBatchSize: Int, ranksInProcess: Int) {
        let shape = plan.model
        let l = Double(shape.layers), d = Double(shape.width), a = Double(shape.heads)
        let t = Double(shape.contextLength), v = Double(shape.vocabularySize), b = Double(max(microBatchSize, 1))
        // The largest pipeline stage bounds a rank's layers; the embeddings and head are counted on it too.
        let layersPerRank = plan.partition.map { partition in
            Double((0..<partition.stages).map { stage in
                partition.layerRanges.enumerated().filter { $0.offset % partition.stages == stage }.reduce(0) { $0 + $1.element.count }
            }.max() ?? shape.layers)
        } ?? l
        let parameters = layersPerRank * (12 * d * d + 13 * d) + v * d + t * d + 2 * d
        let n = Double(plan.mesh.dp), state = Double(optimizerStateBytesPerParameter)
        switch plan.settings.zeroStage {
        case 0: stateBytesPerRank = (8 + state) * parameters
        case 1: stateBytesPerRank = 8 * parameters + state * parameters / n
        case 2: stateBytesPerRank = 4 * parameters + (4 + state) * parameters / n
        default: stateBytesPerRank = (8 + state) * parameters / n
        }
        // bf16 compute copies keep the fp32 masters apart from the parameters.
        stateBytesPerRank += parameters * ZeROMemoryPlan.masterBytesPerParameter(
            stage: plan.settings.zeroStage, dataParallelSize: plan.mesh.dp, parameterDType: plan.settings.dataParallel.parameterDType)
        let perLayer = 2 * (34 * t * b * d + 5 * a * t * t * b)
        activationBytesPerRank = layersPerRank * perLayer + 2 * 4 * t * b * v
        self.ranksInProcess = max(ranksInProcess, 1)
    }

    /// Throws unless the estimate fits in `limit` bytes (default: this machine's memory, or the container's
    /// limit when lower), saying what the run needs and what to change.
    public func check(limit: Double = Double(Self.memoryLimitBytes())) throws {
        guard bytesPerProcess > limit else { return }
        let ranks = ranksInProcess > 1 ? ", × \(ranksInProcess) ranks in this process" : ""
        throw ConvoyError.invalidConfiguration(
            "the run needs at least \(Self.gibibytes(bytesPerProcess)) of memory per process (parameters, gradients and optimizer state \(Self.gibibytes(stateBytesPerRank)) and one micro-batch's activations \(Self.gibibytes(activationBytesPerRank)) per rank\(ranks)) but this machine has \(Self.gibibytes(limit)); "
            + "make the model smaller (--layers, --d-model, --context), lower --batch or raise --accumulate-steps, or shard it over more processes (--zero-stage, --pp under mpirun)")
    }

    /// The memory this process may use: physical memory, or the cgroup's limit when it is lower.
    public static func memoryLimitBytes() -> Int {
        let pages = sysconf(Int32(_SC_PHYS_PAGES)), pageSize = sysconf(Int32(_SC_PAGESIZE))
        var limit = pages > 0 && pageSize > 0 ? pages * pageSize : Int.max
        for path in ["/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"] {
            if let text = try? String(contentsOfFile: path, encoding: .utf8),
               let value = Int(text.trimmingCharacters(in: .whitespacesAndNewlines)), value > 0 {
                limit = min(limit, value)
            }
        }
        return limit
    }

    static func gibibytes(_ bytes: Double) -> String {
        let gib = bytes / Double(1 << 30)
        return gib >= 1024 * 1024 ? String(format: "%.3g GiB", gib) : String(format: "%.1f GiB", gib)
    }
}
