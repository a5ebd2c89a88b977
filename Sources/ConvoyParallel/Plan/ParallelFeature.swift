/// A parallel feature a configuration turns on; the composition rules (``CompositionRules``) are stated between
/// pairs of these.
public enum ParallelFeature: String, CaseIterable, Sendable, Comparable, CustomStringConvertible {
    case dataParallel = "dp"
    case zero1 = "zero-1"
    case zero2 = "zero-2"
    case zero3 = "zero-3"
    case pipeline = "pp"
    case interleavedPipeline = "interleaved"
    case tensorParallel = "tp"
    case sequenceParallel = "sp"
    case contextParallel = "cp"
    case expertParallel = "ep"
    case devicePlacement = "placement"
    case modelParallelGroups = "placement-tuples"
    case fusedOptimizer = "fuse-optimizer"
    case overlapGradReduce = "overlap-grad-reduce"
    case overlapParamGather = "overlap-param-gather"
    case findUnusedParameters = "find-unused-parameters"
    case microBatchSize = "micro-batch-size"

    /// What turns the feature on, for people.
    public var meaning: String {
        switch self {
        case .dataParallel: return "data parallelism (dp > 1)"
        case .zero1: return "ZeRO stage 1 (optimizer state sharded)"
        case .zero2: return "ZeRO stage 2 (gradients sharded too)"
        case .zero3: return "ZeRO stage 3 (parameters sharded too)"
        case .pipeline: return "pipeline parallelism (pp > 1)"
        case .interleavedPipeline: return "interleaved pipeline (virtual stages > 1)"
        case .tensorParallel: return "tensor parallelism (tp > 1)"
        case .sequenceParallel: return "sequence parallelism (sequence_parallel = true)"
        case .contextParallel: return "context parallelism (cp > 1)"
        case .expertParallel: return "expert parallelism (ep > 1)"
        case .devicePlacement: return "[[placement]] sections placing modules on device groups"
        case .modelParallelGroups: return "model-parallel tuples in a [[placement]] device group"
        case .fusedOptimizer: return "flat-buffer optimizer (fuse_optimizer on, or auto with dp > 1)"
        case .overlapGradReduce: return "gradient reduction overlapped with backward"
        case .overlapParamGather: return "parameter all-gathers overlapped with the next forward"
        case .findUnusedParameters: return "parameters without gradients allowed"
        case .microBatchSize: return "an explicit micro_batch_size"
        }
    }

    public var description: String { rawValue }

    public static func < (lhs: ParallelFeature, rhs: ParallelFeature) -> Bool {
        allCases.firstIndex(of: lhs)! < allCases.firstIndex(of: rhs)!
    }
}
