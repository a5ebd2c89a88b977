import ConvoyComm
import ConvoyNN
import ConvoyParallel
import ConvoyTensor
import Foundation

/// Everything a training run is configured by. Values come from defaults, then a TOML file
/// (`--config`), then command-line flags; every key is validated by name (see ``TrainingSettings``).
public struct TrainingConfiguration: Sendable, Equatable {
    // [model]
    /// "gpt" or "ctr" (the click-through-rate model, TrainingConfiguration+ClickThrough.swift).
    public var model = "gpt"
    public var layers = 4
    public var dModel = 128
    public var heads = 4
    public var context = 16
    public var dropout: Double = 0
    /// Token ids the model has (nil: the tokenizer's count, 256 for bytes); `--init-from` sets it.
    public var vocabularySize: Int?
    /// Position embeddings: the longest context the model takes (nil: `context`); `--init-from` sets it
    /// from `n_positions`, and `context` may then be shorter.
    public var positions: Int?
    /// A Hugging Face GPT-2 directory whose weights (and shape, and tokenizer) the run starts from.
    public var initFrom: String?
    /// CTR: width of every embedding row.
    public var ctrEmbeddingWidth = 16
    /// CTR: width of the MLP's hidden layers.
    public var ctrHidden = 64

    // [data]
    /// "arithmetic" (built-in) or "text" (needs `dataPath`).
    public var dataset = "arithmetic"
    public var dataPath: String?
    /// The tokenizer of `dataPath` (a tokenizer.json, a directory with one, or "bytes"); nil: bytes, read
    /// into memory. Any tokenizer given goes through the memory-mapped token cache.
    public var tokenizer: String?
    /// The token cache's directory (nil: ``TokenCache/defaultDirectory(environment:)``).
    public var tokenCache: String?
    public var digits = 2
    public var heldOut = 1000
    public var validationFraction: Double = 0.1
    /// CTR: rows of each of the 26 tables (one value for all, or 26).
    public var ctrVocabulary: [Int] = [10_000]
    /// CTR generated data: the Zipf exponent of the ids.
    public var ctrZipf: Double = 1.1
    /// CTR: validation examples (generated data).
    public var ctrValidation = 4096

    // [training]
    public var seed: UInt64 = 1337
    public var steps = 3000
    /// Global batch: sequences per optimizer step.
    public var batch = 64
    public var accumulateSteps = 1
    public var optimizer = "adamw"
    public var learningRate: Double = 3e-3
    public var minLearningRate: Double = 1e-4
    /// "cosine" (linear warm-up then cosine decay) or "constant".
    public var schedule = "cosine"
    public var warmupSteps = 100
    public var weightDecay: Double = 0.1
    public var beta1: Double = 0.9
    public var beta2: Double = 0.99
    public var momentum: Double = 0.9
    /// Clip gradients to this global norm; 0 disables clipping.
    public var gradClip: Double = 1.0
    public var evalEvery = 500
    /// Validation batches per evaluation.
    public var evalBatches = 8
    /// Write a periodic checkpoint every N steps (0: only the final one).
    public var checkpointEvery = 0
    public var logEvery = 100
    /// Compute threads (nil: CONVOY_THREADS or all cores).
    public var threads: Int?
    /// Directory for the run's outputs (effective configuration, metrics, periodic checkpoints).
    public var output = "runs/train"
    /// Where the final checkpoint goes (nil: `<output>/final`).
    public var save: String?
    /// Replace the outputs of an earlier run in `output` and `save` (otherwise refused; RunDirectory.swift).
    public var overwrite = false

    // [parallel]
    /// Data-parallel ranks (nil: 1 on the Local backend, the world size under MPI).
    public var dp: Int?
    /// "local" or "mpi" (nil: MPI when started by mpirun, else Local).
    public var backend: String?
    /// ZeRO stage: 0 is plain data parallelism; 1 shards optimizer state; 2 also gradients; 3 also parameters.
    public var zeroStage = 0
    // [parallel.pipeline]
    /// Pipeline stages, schedule, virtual stages and explicit stage sizes (`pipeline.stages` is pp).
    public var pipeline = PipelineOptions()
    /// Sequences per micro-batch; when set, micro_batch_size × accumulate_steps × dp must equal the batch.
    public var microBatchSize: Int?
    // [parallel.ddp]
    public var ddp = DataParallelOptions()
    /// Tensor-parallel ranks per layer (`parallel.tp`).
    public var tp = 1
    /// Sequence parallelism with tensor parallelism (`parallel.sequence_parallel`).
    public var sequenceParallel = false
    /// The device mesh's axis order, fastest-varying first (`parallel.order`).
    public var meshOrder = "tp-dp-pp"
    /// `[[placement]]` sections: module-name patterns on Hetu device-group strings.
    public var placements: [ModulePlacement] = []
    /// Write a Chrome trace of forward, backward, bucket all-reduces and optimizer steps here.
    public var trace: String?
    // [parallel.ps]
    /// Parameter servers (0: none).
    public var psServers = 0
    /// Where dense parameters are synchronised: "ps" (on the servers), "hybrid" (all-reduced among the
    /// workers, tables on the servers) or "allreduce" (everything all-reduced, no servers).
    public var comm = "hybrid"
    /// "0" (BSP), "K" (SSP) or "inf" (ASP).
    public var staleness = "0"

    // [training] mixed precision and memory
    /// "fp32", or "bf16": matrix products with bf16 operands and fp32 accumulation, everything else fp32
    /// (``ConvoyTensor/ComputePrecision``).
    public var precision = "fp32"
    /// Loss scaling: "none", "dynamic" or a fixed factor written as a number (``LossScaling``).
    public var lossScale = "none"
    /// Activation recompute: "none", "selective" (the attention core) or "full" (whole blocks).
    public var recompute = "none"
    /// How many blocks (the first ones) recompute; nil: all of them.
    public var recomputeLayers: Int?

    public init() {}

    /// The final checkpoint's directory.
    public var finalCheckpointDirectory: String { save ?? output + "/final" }
    /// The periodic checkpoint's directory (replaced atomically each time).
    public var periodicCheckpointDirectory: String { output + "/checkpoint" }

    /// The precision matrix products run at during training steps.
    public var computePrecision: DType { precision == "bf16" ? .bfloat16 : .float32 }

    /// The activation recompute the forward passes of training steps apply.
    public var activationRecompute: ActivationRecompute {
        ActivationRecompute(granularity: ActivationRecompute.Granularity(rawValue: recompute) ?? .none, layers: recomputeLayers)
    }

    /// The model this configuration trains.
    public var modelConfiguration: GPTConfiguration {
        GPTConfiguration(vocabularySize: vocabularySize ?? ByteTokenizer.vocabularySize, contextLength: positions ?? context, layers: layers, heads: heads, width: dModel,
                         embeddingDropout: Float(dropout), attentionDropout: Float(dropout), residualDropout: Float(dropout))
    }

    /// Checks relations between keys that single-key validation cannot see.
    public func validate() throws {
        if model == "ctr" {
            try validateClickThrough()
            return
        }
        if psServers > 0 { throw ConvoyError.invalidConfiguration("--ps-servers \(psServers): parameter servers hold the embedding tables of --model ctr; GPT trains with --dp/--pp/--tp") }
        if placements.contains(where: { $0.role != nil || $0.comm != nil }) {
            throw ConvoyError.invalidConfiguration("[[placement]] role and comm describe parameter servers of --model ctr; a GPT placement has modules and devices")
        }
        if optimizer == "adagrad" { throw ConvoyError.invalidConfiguration("--optimizer adagrad is the sparse-table rule of --model ctr; GPT trains with adamw, adam, sgd, momentum or nesterov") }
        try validateModelSources()
        guard dModel % heads == 0 else {
            throw ConvoyError.invalidConfiguration("model.d_model \(dModel) is not divisible by model.heads \(heads); choose a d_model that is a multiple of heads")
        }
        guard batch % accumulateSteps == 0 else {
            throw ConvoyError.invalidConfiguration("training.batch \(batch) is not divisible by training.accumulate_steps \(accumulateSteps)")
        }
        switch dataset {
        case "arithmetic":
            if let dataPath { throw Self.contradictoryDataset(dataPath) }
            let needed = ArithmeticDataset.longestLine(digits: digits)
            guard context >= needed else {
                throw ConvoyError.invalidConfiguration("model.context \(context) is too short for \(digits)-digit additions (lines up to \(needed) tokens); use --context \(needed) or more")
            }
        case "text":
            guard dataPath != nil else {
                throw ConvoyError.invalidConfiguration("data.dataset is \"text\" but no data.path is set; pass --data FILE")
            }
        default:
            throw ConvoyError.invalidConfiguration("data.dataset must be \"arithmetic\" or \"text\", got \"\(dataset)\"")
        }
        guard minLearningRate <= learningRate else {
            throw ConvoyError.invalidConfiguration("training.min_lr \(minLearningRate) exceeds training.lr \(learningRate)")
        }
        // Every parallel refusal comes from the plan's rules table; the world size is not known yet.
        _ = try ParallelPlan(settings: try parallelSettings(), worldSize: nil, model: modelConfiguration.shape)
        try modelConfiguration.validate()
    }

    /// The `[parallel]` settings as the plan reads them.
    public func parallelSettings() throws -> ParallelSettings {
        var settings = ParallelSettings()
        settings.dataParallelSize = dp
        settings.tensorParallelSize = tp
        settings.sequenceParallel = sequenceParallel
        settings.order = try DeviceMesh.parseOrder(meshOrder)
        settings.zeroStage = zeroStage
        settings.dataParallel = ddp
        settings.dataParallel.parameterDType = computePrecision
        settings.pipeline = pipeline
        settings.microBatches = accumulateSteps
        settings.microBatchSize = microBatchSize
        settings.globalBatch = batch
        settings.placements = placements
        return settings
    }

    /// Builds the model this configuration trains.
    public func makeModel() throws -> any LanguageModel {
        try GPT(modelConfiguration, seed: seed)
    }

    /// The learning-rate schedule.
    public var learningRateSchedule: any LearningRateSchedule {
        switch schedule {
        case "constant": return ConstantSchedule(Float(learningRate))
        default: return WarmupCosineSchedule(peak: Float(learningRate), minimum: Float(minLearningRate), warmupSteps: warmupSteps, totalSteps: steps)
        }
    }

    /// The optimizer over a model's parameters (matrices decay, biases and norms do not): the flat-buffer
    /// (fused) kind when `parallel.ddp.fuse_optimizer` says so for `ranks` ranks. `externalGradients`: the
    /// gradients are views owned by data parallelism's fused buffer, which the fused optimizer then reads.
    public func makeOptimizer(for model: Module, ranks: Int = 1, externalGradients: Bool = false) throws -> any Optimizer {
        let groups = ParameterGroup.decayingMatrices(of: model, weightDecay: Float(weightDecay))
        guard ddp.fuseOptimizer.isEnabled(ranks: ranks) else { return makePerTensorOptimizer(groups) }
        return try makeFusedOptimizer(groups, gradientLayout: externalGradients ? .external : .flat, placement: .packed)
    }

    /// The optimizer a ZeRO stage runs over its shard slices (views into its parameter and gradient buffers,
    /// grouped so matrix slices decay): the flat-buffer kind when `parallel.ddp.fuse_optimizer` says so for
    /// `dataParallelSize` ranks, updating the slices in place — they must stay where ZeRO's collectives read them.
    public func makeShardOptimizer(_ groups: [ParameterGroup], dataParallelSize: Int) throws -> any Optimizer {
        guard ddp.fuseOptimizer.isEnabled(ranks: dataParallelSize) else { return makePerTensorOptimizer(groups) }
        return try makeFusedOptimizer(groups, gradientLayout: .external, placement: .inPlace)
    }

    private func makeFusedOptimizer(_ groups: [ParameterGroup], gradientLayout: FlatParameterBuffer.GradientLayout,
                                    placement: FlatParameterBuffer.Placement) throws -> any Optimizer {
        let lr = Float(learningRate), b1 = Float(beta1), b2 = Float(beta2), m = Float(momentum)
        switch optimizer {
        case "sgd": return try FusedSGD(groups, learningRate: lr, momentum: 0, gradientLayout: gradientLayout, placement: placement)
        case "momentum": return try FusedSGD(groups, learningRate: lr, momentum: m, gradientLayout: gradientLayout, placement: placement)
        case "nesterov": return try FusedSGD(groups, learningRate: lr, momentum: m, nesterov: true, gradientLayout: gradientLayout, placement: placement)
        case "adam": return try FusedAdam(groups, learningRate: lr, beta1: b1, beta2: b2, gradientLayout: gradientLayout, placement: placement)
        default: return try FusedAdam.adamW(groups, learningRate: lr, beta1: b1, beta2: b2, weightDecay: Float(weightDecay),
                                        gradientLayout: gradientLayout, placement: placement)
        }
    }

    private func makePerTensorOptimizer(_ groups: [ParameterGroup]) -> any Optimizer {
        let lr = Float(learningRate), b1 = Float(beta1), b2 = Float(beta2), m = Float(momentum)
        switch optimizer {
        case "sgd": return SGD(groups, learningRate: lr, momentum: 0)
        case "momentum": return SGD(groups, learningRate: lr, momentum: m)
        case "nesterov": return SGD(groups, learningRate: lr, momentum: m, nesterov: true)
        case "adam": return Adam(groups, learningRate: lr, beta1: b1, beta2: b2)
        default: return Adam.adamW(groups, learningRate: lr, beta1: b1, beta2: b2, weightDecay: Float(weightDecay))
        }
    }

    /// The dataset this configuration trains on; with a tokenizer, its tokens come from the token cache
    /// (tokenised first when they are not there, shown on `display`).
    public func makeDataset(display: ProgressDisplay? = nil) throws -> any TrainingDataset {
        switch dataset {
        case "text":
            guard let tokenizer else {
                return try TextDataset(path: dataPath!, contextLength: context, seed: seed, validationFraction: validationFraction)
            }
            let tokens = try cachedTokens(tokenizer: try TokenizerLoader.load(path: tokenizer), display: display)
            return try TextDataset(tokens: tokens, name: dataPath!, contextLength: context, seed: seed, validationFraction: validationFraction)
        default:
            return try ArithmeticDataset(seed: seed, digits: digits, contextLength: context, heldOutCount: heldOut)
        }
    }
}
