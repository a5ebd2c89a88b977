import ConvoyNN
import ConvoyTensor

/// The bytes each data-parallel rank needs for parameters, gradients and optimizer state under a ZeRO stage,
/// from the formulas in DESIGN.md §7 (fp32 everywhere: 4 B parameters, 4 B gradients, optimizer state per
/// ``OptimizerKind``).
///
/// Stage 1 shards the optimizer state, stage 2 also the gradients, stage 3 also the parameters. A sharded part
/// holds ⌈Ψ/N⌉ elements on each rank, so a parameter count the data-parallel size does not divide costs every rank
/// the larger share; when N divides Ψ, Adam reduces exactly to 16Ψ, 8Ψ + 8Ψ/N, 4Ψ + 12Ψ/N and 16Ψ/N.
///
/// The real buffers pad every bucket to a multiple of N (each rank owns the same-offset shard of every bucket);
/// to plan for those, build the plan from ``paddedParameterCount(bucketElementCounts:dataParallelSize:)``,
/// which counts the padding both in the whole buffers and in the shards.
public struct ZeROMemoryPlan: Sendable, Equatable {
    /// What the optimizer keeps per parameter.
    public enum OptimizerKind: String, Sendable, Equatable, CaseIterable {
        /// Adam: two fp32 moments.
        case adam
        /// AdamW: two fp32 moments, like ``adam``.
        case adamW = "adamw"
        /// SGD with momentum: one fp32 momentum buffer.
        case momentum
        /// SGD with Nesterov momentum: one fp32 momentum buffer.
        case nesterov
        /// Plain SGD: no state.
        case sgd

        /// Optimizer-state bytes per parameter.
        public var stateBytesPerParameter: Int {
            switch self {
            case .adam, .adamW: return 8
            case .momentum, .nesterov: return 4
            case .sgd: return 0
            }
        }

        /// The kind a command-line or TOML name (`adamw`, `adam`, `sgd`, `momentum`, `nesterov`) stands for.
        public init(name: String) throws {
            guard let kind = OptimizerKind(rawValue: name.lowercased()) else {
                let names = OptimizerKind.allCases.map(\.rawValue).joined(separator: ", ")
                throw ConvoyError.invalidConfiguration("--optimizer must be one of \(names), got \"\(name)\"")
            }
            self = kind
        }
    }

    /// Bytes of one parameter and of one gradient element (fp32).
    public static let elementBytes = 4
    /// The ZeRO stages there are (0 is plain data parallelism).
    public static let stages = 0...3

    /// Ψ: parameters of the model (or of the padded buffers).
    public let parameterCount: Int
    /// N: data-parallel ranks.
    public let dataParallelSize: Int
    /// K: the ZeRO stage, 0...3.
    public let stage: Int
    /// The optimizer whose state is counted.
    public let optimizer: OptimizerKind
    /// The element type parameters compute in (bfloat16: fp32 masters kept apart, ``masterBytes``).
    public let parameterDType: DType

    /// Parameter bytes on each rank.
    public let parameterBytes: Int
    /// Gradient bytes on each rank.
    public let gradientBytes: Int
    /// Optimizer-state bytes on each rank.
    public let optimizerStateBytes: Int
    /// Bytes of fp32 master weights kept apart from the parameters on each rank: with bf16 compute copies,
    /// ``masterBytesPerParameter(stage:dataParallelSize:parameterDType:)`` of every parameter; 0 in fp32.
    public let masterBytes: Int

    /// Parameters, gradients, optimizer state and separate masters together, per rank.
    public var totalBytes: Int { parameterBytes + gradientBytes + optimizerStateBytes + masterBytes }

    /// Bytes per parameter, on each rank, of the fp32 masters that bf16 compute copies keep apart from the
    /// parameters: 4 without ZeRO (one side buffer, ``BFloat16ComputeCopies``), 4/N at stages 1–2 (a master
    /// shard), none at stage 3 (the parameter shard is itself the master) and none in fp32.
    public static func masterBytesPerParameter(stage: Int, dataParallelSize: Int, parameterDType: DType) -> Double {
        guard parameterDType == .bfloat16 else { return 0 }
        return stage == 0 ? 4 : stage < 3 ? 4 / Double(max(dataParallelSize, 1)) : 0
    }

    /// Elements of one rank's shard: ⌈Ψ/N⌉.
    public var shardElementCount: Int { (parameterCount + dataParallelSize - 1) / dataParallelSize }

    /// Plans stage `stage` for `parameterCount` parameters over `dataParallelSize` ranks.
    ///
    /// - Throws: ``ConvoyError/invalidConfiguration(_:)`` when the stage is outside 0–3, the data-parallel size is
    ///   below 1 or the parameter count is negative.
    /// `parameterDType` bfloat16 adds the separate fp32 masters (``masterBytes``).
    public init(parameterCount: Int, dataParallelSize: Int, stage: Int, optimizer: OptimizerKind = .adamW, parameterDType: DType = .float32) throws {
        guard Self.stages.contains(stage) else {
            throw ConvoyError.invalidConfiguration(
                "--zero-stage must be 0, 1, 2 or 3 (0 is plain data parallelism), got \(stage); pick one of those")
        }
        guard dataParallelSize >= 1 else {
            throw ConvoyError.invalidConfiguration("--dp must be at least 1 data-parallel rank, got \(dataParallelSize)")
        }
        guard parameterCount >= 0 else {
            throw ConvoyError.invalidConfiguration("the parameter count must not be negative, got \(parameterCount)")
        }
        self.parameterCount = parameterCount
        self.dataParallelSize = dataParallelSize
        self.stage = stage
        self.optimizer = optimizer
        self.parameterDType = parameterDType
        let shard = (parameterCount + dataParallelSize - 1) / dataParallelSize
        func elements(shardedFrom firstShardedStage: Int) -> Int { stage >= firstShardedStage ? shard : parameterCount }
        parameterBytes = elements(shardedFrom: 3) * Self.elementBytes
        gradientBytes = elements(shardedFrom: 2) * Self.elementBytes
        optimizerStateBytes = elements(shardedFrom: 1) * optimizer.stateBytesPerParameter
        switch Self.masterBytesPerParameter(stage: stage, dataParallelSize: dataParallelSize, parameterDType: parameterDType) {
        case 0: masterBytes = 0
        case 4: masterBytes = parameterCount * 4
        default: masterBytes = shard * 4
        }
    }

    /// Plans every stage, 0 through 3, for the same model, ranks and optimizer.
    public static func allStages(parameterCount: Int, dataParallelSize: Int, optimizer: OptimizerKind = .adamW) throws -> [ZeROMemoryPlan] {
        try stages.map { try ZeROMemoryPlan(parameterCount: parameterCount, dataParallelSize: dataParallelSize, stage: $0, optimizer: optimizer) }
    }

    /// The formula in Ψ and N this plan follows, e.g. `4Ψ + 12Ψ/N` for Adam at stage 2.
    public var formula: String {
        let state = optimizer.stateBytesPerParameter
        let masters = parameterDType == .bfloat16 ? Self.elementBytes : 0  // separate fp32 masters, below stage 3
        let replicated: Int, sharded: Int
        switch stage {
        case 0: (replicated, sharded) = (2 * Self.elementBytes + state + masters, 0)
        case 1: (replicated, sharded) = (2 * Self.elementBytes, state + masters)
        case 2: (replicated, sharded) = (Self.elementBytes, Self.elementBytes + state + masters)
        default: (replicated, sharded) = (0, 2 * Self.elementBytes + state)
        }
        let terms = [replicated > 0 ? "\(replicated)Ψ" : nil, sharded > 0 ? "\(sharded)Ψ/N" : nil].compactMap { $0 }
        return terms.isEmpty ? "0" : terms.joined(separator: " + ")
    }

    /// Elements the padded buffers hold: each bucket rounded up to a multiple of `dataParallelSize`, so every rank
    /// owns an equal, same-offset shard of every bucket.
    public static func paddedParameterCount(bucketElementCounts: [Int], dataParallelSize: Int) -> Int {
        precondition(dataParallelSize >= 1, "dataParallelSize must be at least 1")
        return bucketElementCounts.reduce(0) { $0 + ($1 + dataParallelSize - 1) / dataParallelSize * dataParallelSize }
    }
}

extension ZeROMemoryPlan {
    /// Model shapes `convoy plan --model` knows by name.
    public static let modelPresets: [(name: String, configuration: GPTConfiguration)] = [
        // The benchmark model (`convoy bench`): 6 × 384, 6 heads, context 256, byte vocabulary.
        ("gpt-mini", GPTConfiguration(vocabularySize: 256, contextLength: 256, layers: 6, heads: 6, width: 384)),
        // The small model trained on the built-in arithmetic data set.
        ("arithmetic", GPTConfiguration(vocabularySize: 256, contextLength: 16, layers: 4, heads: 4, width: 128)),
    ]

    /// The preset called `name`.
    ///
    /// - Throws: ``ConvoyError/invalidConfiguration(_:)`` naming the presets when there is none by that name.
    public static func modelPreset(named name: String) throws -> GPTConfiguration {
        guard let preset = modelPresets.first(where: { $0.name == name.lowercased() }) else {
            let names = modelPresets.map(\.name).joined(separator: ", ")
            throw ConvoyError.invalidConfiguration("--model must be one of \(names), got \"\(name)\"")
        }
        return preset.configuration
    }
}
