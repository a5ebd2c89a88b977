import ConvoyComm
import ConvoyNN
import ConvoyParallel
import ConvoyTensor
import Foundation
import TOMLKit

/// A configuration value as written in TOML or on the command line.
public enum SettingValue: Sendable, Equatable, CustomStringConvertible {
    case integer(Int)
    case real(Double)
    case text(String)
    case boolean(Bool)

    public var description: String {
        switch self {
        case .integer(let value): return String(value)
        case .real(let value): return String(value)
        case .text(let value): return "\"\(value)\""
        case .boolean(let value): return String(value)
        }
    }
}

/// The one table of training settings. Each entry declares, once, a setting's TOML key (`section.key`), its
/// command-line flag, its type with range or choices, its help text, and how it is read from and written to a
/// ``TrainingConfiguration``. The TOML reader, the flag parser of `convoy train`, its `--help` text and the
/// effective configuration file are all generated from it, so a setting is validated the same way wherever it
/// comes from.
///
/// To add a setting: add one line to ``all`` (and the field to ``TrainingConfiguration``); nothing else.
public enum TrainingSettings {
    /// One configuration setting.
    public struct Setting: Sendable {
        /// `section.key`, as in the TOML file.
        public let key: String
        /// The command-line flag that overrides it (`--lr`).
        public let flag: String
        /// The values it takes: decides how a flag's text is read and what `--help` shows.
        public let type: SettingType
        /// One line for `--help`.
        public let help: String
        let apply: @Sendable (inout TrainingConfiguration, SettingValue) throws(SettingProblem) -> Void
        let read: @Sendable (TrainingConfiguration) -> SettingValue?
    }

    private static func checked(_ value: SettingValue, in range: ClosedRange<Int>) throws(SettingProblem) -> Int {
        guard case .integer(let number) = value else { throw SettingProblem("expected an integer, got \(value)") }
        guard range.contains(number) else { throw SettingProblem("\(number) is out of range; use a value in \(range.lowerBound)...\(range.upperBound)") }
        return number
    }

    private static func text(_ value: SettingValue, or expected: String) throws(SettingProblem) -> String {
        guard case .text(let text) = value, !text.isEmpty else { throw SettingProblem("expected \(expected), got \(value)") }
        return text
    }

    private static func integer(_ key: String, _ flag: String, _ path: WritableKeyPath<TrainingConfiguration, Int> & Sendable, _ range: ClosedRange<Int>, _ help: String) -> Setting {
        Setting(key: key, flag: flag, type: .integer(range), help: help, apply: { configuration, value throws(SettingProblem) in
            configuration[keyPath: path] = try checked(value, in: range)
        }, read: { .integer($0[keyPath: path]) })
    }

    private static func optionalInteger(_ key: String, _ flag: String, _ path: WritableKeyPath<TrainingConfiguration, Int?> & Sendable, _ range: ClosedRange<Int>, _ help: String) -> Setting {
        Setting(key: key, flag: flag, type: .integer(range), help: help, apply: { configuration, value throws(SettingProblem) in
            configuration[keyPath: path] = try checked(value, in: range)
        }, read: { $0[keyPath: path].map { .integer($0) } })
    }

    private static func real(_ key: String, _ flag: String, _ path: WritableKeyPath<TrainingConfiguration, Double> & Sendable, _ range: ClosedRange<Double>, openUpper: Bool = false, _ help: String) -> Setting {
        Setting(key: key, flag: flag, type: .number(range, upperExclusive: openUpper), help: help, apply: { configuration, value throws(SettingProblem) in
            let number: Double
            switch value {
            case .real(let x): number = x
            case .integer(let x): number = Double(x)
            default: throw SettingProblem("expected a number, got \(value)")
            }
            guard number.isFinite, range.contains(number), !(openUpper && number == range.upperBound) else {
                throw SettingProblem("\(number) is out of range; use a value in \(range.lowerBound)...\(range.upperBound)\(openUpper ? " (exclusive)" : "")")
            }
            configuration[keyPath: path] = number
        }, read: { .real($0[keyPath: path]) })
    }

    private static func choice(_ key: String, _ flag: String, _ path: WritableKeyPath<TrainingConfiguration, String> & Sendable, _ options: [String], _ help: String) -> Setting {
        Setting(key: key, flag: flag, type: .choice(options), help: help, apply: { configuration, value throws(SettingProblem) in
            guard case .text(let text) = value else { throw SettingProblem("expected a string, got \(value)") }
            guard options.contains(text) else { throw SettingProblem("\"\(text)\" is not one of \(options.map { "\"\($0)\"" }.joined(separator: ", "))") }
            configuration[keyPath: path] = text
        }, read: { .text($0[keyPath: path]) })
    }

    private static func path(_ key: String, _ flag: String, _ keyPath: WritableKeyPath<TrainingConfiguration, String> & Sendable, _ help: String) -> Setting {
        Setting(key: key, flag: flag, type: .path, help: help, apply: { configuration, value throws(SettingProblem) in
            configuration[keyPath: keyPath] = try text(value, or: "a non-empty path")
        }, read: { .text($0[keyPath: keyPath]) })
    }

    private static func optionalPath(_ key: String, _ flag: String, _ keyPath: WritableKeyPath<TrainingConfiguration, String?> & Sendable, _ help: String) -> Setting {
        Setting(key: key, flag: flag, type: .path, help: help, apply: { configuration, value throws(SettingProblem) in
            configuration[keyPath: keyPath] = try text(value, or: "a non-empty path")
        }, read: { $0[keyPath: keyPath].map { .text($0) } })
    }

    private static func boolean(_ key: String, _ flag: String, _ path: WritableKeyPath<TrainingConfiguration, Bool> & Sendable, _ help: String) -> Setting {
        Setting(key: key, flag: flag, type: .boolean, help: help, apply: { configuration, value throws(SettingProblem) in
            switch value {
            case .boolean(let flag): configuration[keyPath: path] = flag
            case .text(let text) where ["true", "on", "yes", "1"].contains(text.lowercased()): configuration[keyPath: path] = true
            case .text(let text) where ["false", "off", "no", "0"].contains(text.lowercased()): configuration[keyPath: path] = false
            default: throw SettingProblem("expected true or false, got \(value)")
            }
        }, read: { .boolean($0[keyPath: path]) })
    }

    private static func fusion(_ key: String, _ flag: String, _ path: WritableKeyPath<TrainingConfiguration, FusionChoice> & Sendable, _ help: String) -> Setting {
        Setting(key: key, flag: flag, type: .choice(FusionChoice.allCases.map(\.rawValue)), help: help, apply: { configuration, value throws(SettingProblem) in
            let text: String
            switch value {
            case .text(let word): text = word.lowercased()
            case .boolean(let on): text = on ? "on" : "off"
            default: throw SettingProblem("expected \"auto\", \"on\" or \"off\", got \(value)")
            }
            guard let choice = FusionChoice(rawValue: text == "true" ? "on" : text == "false" ? "off" : text) else {
                throw SettingProblem("expected \"auto\", \"on\" or \"off\", got \(value)")
            }
            configuration[keyPath: path] = choice
        }, read: { .text($0[keyPath: path].rawValue) })
    }

    /// Every setting, in the order the effective configuration and `--help` list them.
    public static let all: [Setting] = [
        choice("model.kind", "--model", \.model, ["gpt", "ctr"], "Model: a GPT, or the click-through-rate model (26 embedding tables, 13 dense features, MLP, logistic loss)."),
        integer("model.layers", "--layers", \.layers, 1...256, "Transformer blocks."),
        integer("model.d_model", "--d-model", \.dModel, 1...65536, "Model width."),
        integer("model.heads", "--heads", \.heads, 1...1024, "Attention heads."),
        integer("model.context", "--context", \.context, 1...1_048_576, "Context length in tokens."),
        optionalInteger("model.vocab_size", "--vocab-size", \.vocabularySize, 256...16_777_216, "Token ids of the model (default: the tokenizer's; 256 for bytes). --init-from takes it from config.json."),
        optionalInteger("model.positions", "--positions", \.positions, 1...1_048_576, "Position embeddings, the longest context the model takes (default: --context). --init-from takes it from n_positions."),
        optionalPath("model.init_from", "--init-from", \.initFrom, "Start from a Hugging Face GPT-2 directory (config.json + model.safetensors): its shape, weights and tokenizer; the final checkpoint is again such a directory, with the tokenizer files copied in."),
        real("model.dropout", "--dropout", \.dropout, 0...1, openUpper: true, "Dropout probability (embeddings, attention, residuals)."),
        integer("model.ctr_embedding_dim", "--ctr-embedding-dim", \.ctrEmbeddingWidth, 1...4096, "CTR: width of every embedding row."),
        integer("model.ctr_hidden", "--ctr-hidden", \.ctrHidden, 1...65536, "CTR: width of the MLP's two hidden layers."),
        choice("data.dataset", "--dataset", \.dataset, ["arithmetic", "text"], "Dataset: the built-in arithmetic problems, or a text file's bytes (--data)."),
        Setting(key: "data.path", flag: "--data", type: .path, help: "Train on this text file's bytes instead of the arithmetic dataset (sets --dataset text).", apply: { configuration, value throws(SettingProblem) in
            configuration.dataPath = try text(value, or: "a file path")
            configuration.dataset = "text"
        }, read: { $0.dataPath.map { .text($0) } }),
        optionalPath("data.tokenizer", "--tokenizer", \.tokenizer, "Tokenizer of --data: a tokenizer.json, a directory with tokenizer.json or vocab.json + merges.txt, or bytes. The corpus is tokenised once, in parallel, into a memory-mapped token cache (default: bytes, read into memory)."),
        optionalPath("data.token_cache", "--token-cache", \.tokenCache, "Directory of the token cache (default: $CONVOY_CACHE/tokens, else ~/.cache/convoy/tokens)."),
        integer("data.digits", "--digits", \.digits, 1...9, "Maximum digits per arithmetic operand."),
        integer("data.held_out", "--held-out", \.heldOut, 1...1_000_000, "Arithmetic problems held out of training to measure accuracy."),
        real("data.validation_fraction", "--validation-fraction", \.validationFraction, 0...0.5, "Share of a text file kept for validation."),
        Setting(key: "data.ctr_vocabulary", flag: "--ctr-vocabulary", type: .integerList, help: "CTR: rows of each embedding table, one value for all 26 or 26 values (e.g. 1000000,1000,...).", apply: { configuration, value throws(SettingProblem) in
            guard case .text(let text) = value else { throw SettingProblem("expected row counts such as [1000000] or 26 values, got \(value)") }
            let counts = text.split(separator: ",").map { Int($0.trimmingCharacters(in: .whitespaces)) }
            guard counts.count == 1 || counts.count == 26, counts.allSatisfy({ ($0 ?? 0) >= 1 && ($0 ?? 0) <= Int(Int32.max) }) else {
                throw SettingProblem("expected one positive row count for all 26 tables or 26 of them (each at most \(Int32.max)), got \(value)")
            }
            configuration.ctrVocabulary = counts.map { $0! }
        }, read: { .text($0.ctrVocabulary.map(String.init).joined(separator: ",")) }),
        real("data.ctr_zipf", "--ctr-zipf", \.ctrZipf, 0.01...10, "CTR generated data: Zipf exponent of the ids."),
        integer("data.ctr_validation", "--ctr-validation", \.ctrValidation, 2...10_000_000, "CTR generated data: validation examples (AUC and log loss are measured on them)."),
        Setting(key: "training.seed", flag: "--seed", type: .integer(0...Int.max), help: "Random seed (data, initialisation, dropout).", apply: { configuration, value throws(SettingProblem) in
            guard case .integer(let number) = value, number >= 0 else { throw SettingProblem("expected a non-negative integer, got \(value)") }
            configuration.seed = UInt64(number)
        }, read: { .integer(Int(truncatingIfNeeded: $0.seed)) }),
        integer("training.steps", "--steps", \.steps, 1...100_000_000, "Optimizer steps."),
        integer("training.batch", "--batch", \.batch, 1...1_000_000, "Global batch: sequences per optimizer step."),
        integer("training.accumulate_steps", "--accumulate-steps", \.accumulateSteps, 1...65536, "Micro-batches per step (gradient accumulation; with --pp, the pipeline's micro-batches)."),
        choice("training.optimizer", "--optimizer", \.optimizer, ["adamw", "adam", "sgd", "momentum", "nesterov", "adagrad"], "Optimizer (adagrad: --model ctr only, Paddle's sparse rule)."),
        real("training.lr", "--lr", \.learningRate, 0...10, "Peak learning rate."),
        real("training.min_lr", "--min-lr", \.minLearningRate, 0...10, "Final learning rate of the cosine schedule."),
        choice("training.lr_schedule", "--lr-schedule", \.schedule, ["cosine", "constant"], "Learning-rate schedule after the warm-up."),
        integer("training.warmup", "--warmup", \.warmupSteps, 0...100_000_000, "Linear warm-up steps."),
        real("training.weight_decay", "--weight-decay", \.weightDecay, 0...10, "Weight decay of matrices."),
        real("training.beta1", "--beta1", \.beta1, 0...1, openUpper: true, "Adam's first-moment decay."),
        real("training.beta2", "--beta2", \.beta2, 0...1, openUpper: true, "Adam's second-moment decay."),
        real("training.momentum", "--momentum", \.momentum, 0...1, openUpper: true, "Momentum of the momentum and nesterov optimizers."),
        real("training.grad_clip", "--grad-clip", \.gradClip, 0...1e9, "Clip gradients to this global norm (0: off)."),
        integer("training.eval_every", "--eval-every", \.evalEvery, 0...100_000_000, "Validation loss every N steps (0: only at the end)."),
        integer("training.eval_batches", "--eval-batches", \.evalBatches, 1...1_000_000, "Batches per validation-loss measurement."),
        integer("training.checkpoint_every", "--checkpoint-every", \.checkpointEvery, 0...100_000_000, "Periodic checkpoint every N steps (0: off)."),
        integer("training.log_every", "--log-every", \.logEvery, 1...100_000_000, "Metrics (and plain progress lines) every N steps."),
        optionalInteger("training.threads", "--threads", \.threads, 1...1024, "Compute threads (default: CONVOY_THREADS or all cores); with --dp on Local ranks, shared among the ranks."),
        path("training.output", "--output", \.output, "Directory of the run's outputs (config.toml, metrics.jsonl, periodic checkpoint)."),
        optionalPath("training.save", "--save", \.save, "Directory of the final checkpoint (default: <output>/final)."),
        boolean("training.overwrite", "--overwrite", \.overwrite, "Replace the metrics and checkpoints of an earlier run in --output/--save (without it they are refused; nothing Convoy did not write is ever replaced)."),
        optionalPath("training.trace", "--trace", \.trace, "Write a Chrome trace (chrome://tracing, Perfetto) of forward, backward, all-reduces and optimizer steps."),
        choice("training.precision", "--precision", \.precision, ["fp32", "bf16"], "Compute precision: bf16 runs matrix products with bf16 operands and fp32 accumulation, and every parameter computes with its fp32 master weight rounded to bf16 (ZeRO gathers bf16); layer norm, softmax, loss, optimizer, gradients and the masters stay fp32."),
        Setting(key: "training.loss_scale", flag: "--loss-scale", type: .text("dynamic|none|NUMBER"), help: "Loss scaling: dynamic (2^16, ×2 after 2000 good steps, ×0.5 and skip the step on Inf/NaN gradients), none, or a fixed factor (steps with Inf/NaN gradients are skipped).", apply: { configuration, value throws(SettingProblem) in
            let text: String
            switch value {
            case .text(let word): text = word
            case .integer(let number): text = String(number)
            case .real(let number): text = String(number)
            case .boolean: throw SettingProblem("expected dynamic, none or a positive number, got \(value)")
            }
            do { _ = try LossScaling(parsing: text) } catch { throw SettingProblem(CompositionRules.message(of: error)) }
            configuration.lossScale = text
        }, read: { .text($0.lossScale) }),
        choice("training.recompute", "--recompute", \.recompute, ["none", "selective", "full"], "Activation recompute: selective recomputes the attention core (its T×T probabilities) in backward, full recomputes whole blocks; gradients are bit-identical to none."),
        optionalInteger("training.recompute_layers", "--recompute-layers", \.recomputeLayers, 0...1_000_000, "Recompute only the first N blocks (default: all)."),
        optionalInteger("parallel.dp", "--dp", \.dp, 1...4096, "Data-parallel ranks (Local: threads of this process; under mpirun: the world size)."),
        Setting(key: "parallel.backend", flag: "--backend", type: .choice(["local", "mpi"]), help: "Communication backend (default: mpi under mpirun, else local).", apply: { configuration, value throws(SettingProblem) in
            guard case .text(let text) = value, ["local", "mpi"].contains(text) else { throw SettingProblem("expected \"local\" or \"mpi\", got \(value)") }
            configuration.backend = text
        }, read: { $0.backend.map { .text($0) } }),
        integer("parallel.zero_stage", "--zero-stage", \.zeroStage, 0...3, "ZeRO stage: 0 (plain data parallelism), 1 (shard optimizer state), 2 (also gradients), 3 (also parameters)."),
        integer("parallel.tp", "--tp", \.tp, 1...4096, "Tensor-parallel ranks per layer: attention heads, MLP columns and the vocabulary are cut across them (Megatron's layout)."),
        boolean("parallel.sequence_parallel", "--sequence-parallel", \.sequenceParallel, "With --tp: layer norms, dropout and residual adds hold activations sharded along the sequence (all-gather/reduce-scatter instead of all-reduce)."),
        Setting(key: "parallel.order", flag: "--mesh-order", type: .text("AXES"), help: "Device-mesh axis order, fastest-varying first, e.g. tp-dp-pp.", apply: { configuration, value throws(SettingProblem) in
            guard case .text(let text) = value else { throw SettingProblem("expected axis names joined by '-' such as \"tp-dp-pp\", got \(value)") }
            do { _ = try DeviceMesh(order: try DeviceMesh.parseOrder(text), sizes: [:]) } catch { throw SettingProblem(CompositionRules.message(of: error)) }
            configuration.meshOrder = text
        }, read: { .text($0.meshOrder) }),
        boolean("parallel.ddp.bucketing", "--bucketing", \.ddp.bucketing, "Bucket gradients."),
        real("parallel.ddp.first_bucket_cap_mb", "--first-bucket-cap-mb", \.ddp.firstBucketCapMB, 1e-6...1e6, "Cap of the first gradient bucket in MiB."),
        real("parallel.ddp.bucket_cap_mb", "--bucket-cap-mb", \.ddp.bucketCapMB, 1e-6...1e6, "Cap of the other gradient buckets in MiB."),
        boolean("parallel.ddp.overlap_grad_reduce", "--overlap-grad-reduce", \.ddp.overlapGradReduce, "Overlap bucket all-reduces with backward."),
        fusion("parallel.ddp.fuse_all_reduce", "--fuse-all-reduce", \.ddp.fuseAllReduce, "One all-reduce per bucket group (on) or per parameter (off); gradients always live in one contiguous buffer."),
        fusion("parallel.ddp.fuse_optimizer", "--fuse-optimizer", \.ddp.fuseOptimizer, "Flat-buffer optimizer."),
        boolean("parallel.ddp.find_unused_parameters", "--find-unused-parameters", \.ddp.findUnusedParameters, "Allow parameters without gradients."),
        boolean("parallel.ddp.overlap_param_gather", "--overlap-param-gather", \.ddp.overlapParamGather, "ZeRO: gather updated parameters in the background, each layer waiting for its own."),
        boolean("parallel.ddp.reshard_after_forward", "--reshard-after-forward", \.ddp.reshardAfterForward, "ZeRO-3: release each layer's parameters after its forward and gather them again for backward (true) or keep them (false)."),
        Setting(key: "parallel.ddp.grad_reduce_dtype", flag: "--grad-reduce-dtype", type: .choice(["fp32", "bf16"]), help: "Element type gradients are reduced in (all-reduce under DDP, reduce-scatter under ZeRO 1–3; bf16: half the bytes); they are accumulated, clipped and stepped in fp32.", apply: { configuration, value throws(SettingProblem) in
            guard case .text(let text) = value, ["fp32", "bf16"].contains(text) else { throw SettingProblem("expected \"fp32\" or \"bf16\", got \(value)") }
            configuration.ddp.gradientReduceDType = text == "bf16" ? .bfloat16 : .float32
        }, read: { .text($0.ddp.gradientReduceDType == .bfloat16 ? "bf16" : "fp32") }),
        integer("parallel.ddp.buckets_per_group", "--buckets-per-group", \.ddp.bucketsPerGroup, 1...1024, "ZeRO: consecutive buckets reduce-scattered (and gathered) by one collective."),
        integer("parallel.pipeline.pp", "--pp", \.pipeline.stages, 1...4096, "Pipeline stages (pp); with --dp the world is pp·dp ranks, without it dp = world ÷ pp."),
        optionalInteger("parallel.pipeline.micro_batch_size", "--micro-batch-size", \.microBatchSize, 1...1_000_000, "Sequences per micro-batch (checked: × accumulate steps × dp = batch)."),
        Setting(key: "parallel.pipeline.schedule", flag: "--schedule", type: .choice(PipelineScheduleKind.allCases.map(\.rawValue)), help: "Pipeline schedule (also: F-then-B for gpipe, interleaved for interleaved-1f1b).", apply: { configuration, value throws(SettingProblem) in
            guard case .text(let text) = value else { throw SettingProblem("expected a string, got \(value)") }
            do { configuration.pipeline.schedule = try PipelineScheduleKind(parsing: text) } catch { throw SettingProblem("\(error)") }
        }, read: { .text($0.pipeline.schedule.rawValue) }),
        integer("parallel.pipeline.virtual_stages", "--virtual-stages", \.pipeline.virtualStages, 1...1024, "Model chunks per pipeline rank (interleaved-1f1b)."),
        Setting(key: "parallel.pipeline.stage_layers", flag: "--stage-layers", type: .integerList, help: "Layers per (virtual) stage, e.g. 3,3 (default: balanced).", apply: { configuration, value throws(SettingProblem) in
            // A TOML array of integers arrives as text "3,3" (see apply(toml:)), as does the flag.
            guard case .text(let text) = value else { throw SettingProblem("expected layer counts such as [3, 3], got \(value)") }
            let counts = text.split(separator: ",").map { Int($0.trimmingCharacters(in: .whitespaces)) }
            guard !counts.isEmpty, counts.allSatisfy({ ($0 ?? 0) >= 1 }) else {
                throw SettingProblem("expected positive layer counts such as [3, 3] (one per virtual stage), got \(value)")
            }
            configuration.pipeline.stageLayers = counts.map { $0! }
        }, read: { $0.pipeline.stageLayers.map { .text($0.map(String.init).joined(separator: ",")) } }),
        integer("parallel.ps.servers", "--ps-servers", \.psServers, 0...4096, "CTR: parameter servers S (Local: --dp W workers + S server threads; under mpirun the last S ranks)."),
        choice("parallel.ps.comm", "--comm", \.comm, ["ps", "hybrid", "allreduce"], "CTR: dense parameters on the servers (ps), all-reduced among workers with tables on the servers (hybrid), or everything all-reduced (allreduce)."),
        Setting(key: "parallel.ps.staleness", flag: "--staleness", type: .text("K|inf"), help: "CTR with servers: 0 is BSP, K > 0 SSP (a worker waits for the slowest to be within K steps), inf ASP.", apply: { configuration, value throws(SettingProblem) in
            let text: String
            switch value {
            case .integer(let number): text = String(number)
            case .text(let word): text = word
            default: throw SettingProblem("expected a number of steps or \"inf\", got \(value)")
            }
            do { _ = try Staleness(parsing: text) } catch { throw SettingProblem(CompositionRules.message(of: error)) }
            configuration.staleness = text
        }, read: { .text($0.staleness) }),
    ]

    private static let byKey: [String: Setting] = Dictionary(uniqueKeysWithValues: all.map { ($0.key, $0) })
    static let byFlag: [String: Setting] = Dictionary(uniqueKeysWithValues: all.map { ($0.flag, $0) })

    /// Sets `key` (e.g. "training.lr") on a configuration, validating type and range.
    public static func apply(_ key: String, _ value: SettingValue, to configuration: inout TrainingConfiguration) throws {
        guard let setting = byKey[key] else {
            let suggestion = closest(to: key, among: all.map(\.key)).map { "did you mean '\($0)'? " } ?? ""
            throw ConvoyError.invalidConfiguration("unknown key '\(key)'; \(suggestion)known keys: \(all.map(\.key).joined(separator: ", "))")
        }
        do {
            try setting.apply(&configuration, value)
        } catch {
            throw ConvoyError.invalidConfiguration("\(key): \(error.message)")
        }
    }

    /// Applies a TOML document's keys; unknown sections or keys, wrong types and bad values are errors that
    /// name the key (and the file).
    public static func apply(toml text: String, source: String, to configuration: inout TrainingConfiguration) throws {
        var table: TOMLTable
        do {
            table = try TOMLTable(string: text)
        } catch let error as TOMLParseError {
            throw ConvoyError.invalidConfiguration("\(source): \(error.description) at line \(error.source.begin.line), column \(error.source.begin.column)")
        }
        if let placementValue = table["placement"] {
            configuration.placements = try placements(from: placementValue, source: source)
            table.remove(at: "placement")
        }
        for (section, sectionValue) in table {
            guard sectionValue.table != nil else {
                throw ConvoyError.invalidConfiguration("\(source): top-level key '\(section)' must be a section such as [training]; keys live in [model], [data], [training], [parallel], [parallel.ddp] and [parallel.pipeline]")
            }
        }
        // Nested sections ([parallel.ddp]) become dotted keys.
        var entries: [(String, TOMLValueConvertible)] = []
        func flatten(_ table: TOMLTable, prefix: String) {
            for (name, value) in table {
                if let nested = value.table { flatten(nested, prefix: prefix + name + ".") } else { entries.append((prefix + name, value)) }
            }
        }
        flatten(table, prefix: "")
        if entries.contains(where: { $0.0 == "data.dataset" && $0.1.string == "arithmetic" }), let path = entries.first(where: { $0.0 == "data.path" })?.1.string {
            throw TrainingConfiguration.contradictoryDataset(path)
        }
        for (key, value) in entries {
            let converted: SettingValue
            switch value.type {
            case .int: converted = .integer(value.int!)
            case .double: converted = .real(value.double!)
            case .string: converted = .text(value.string!)
            case .bool: converted = .boolean(value.bool!)
            case .array:
                // Only integer lists exist (parallel.pipeline.stage_layers); they travel as "3,3".
                let items = value.array!.map { $0.int }
                guard items.allSatisfy({ $0 != nil }) else { throw ConvoyError.invalidConfiguration("\(source): \(key) must be a list of integers") }
                converted = .text(items.map { String($0!) }.joined(separator: ","))
            default: throw ConvoyError.invalidConfiguration("\(source): \(key) has unsupported type \(value.type)")
            }
            do {
                try apply(key, converted, to: &configuration)
            } catch let error as ConvoyError {
                if case .invalidConfiguration(let message) = error { throw ConvoyError.invalidConfiguration("\(source): \(message)") }
                throw error
            }
        }
    }

    /// Reads `[[placement]]` sections: an array of tables, each with string keys `modules` and `devices`.
    private static func placements(from value: TOMLValueConvertible, source: String) throws -> [ModulePlacement] {
        guard let array = value.array else {
            throw ConvoyError.invalidConfiguration("\(source): placement must be written as [[placement]] sections, each with modules = \"…\" and devices = \"…\"")
        }
        return try array.enumerated().map { index, item in
            guard let section = item.table else {
                throw ConvoyError.invalidConfiguration("\(source): [[placement]] number \(index + 1) is not a section with modules = \"…\" and devices = \"…\"")
            }
            for (key, _) in section where !["modules", "devices", "role", "comm"].contains(key) {
                throw ConvoyError.invalidConfiguration("\(source): [[placement]] number \(index + 1) has unknown key '\(key)'; a placement has modules and devices (or role = \"server\" with devices, or modules with comm)")
            }
            if let role = section["role"] {
                guard role.string == "server", let devices = section["devices"]?.string, !devices.isEmpty, section["modules"] == nil, section["comm"] == nil else {
                    throw ConvoyError.invalidConfiguration("\(source): [[placement]] number \(index + 1): role must be \"server\", with devices = \"cpu:N,…\" (the server ranks) and no modules or comm")
                }
                return ModulePlacement(modules: "", devices: devices, role: "server")
            }
            if let comm = section["comm"] {
                guard let mode = comm.string, ["ps", "allreduce"].contains(mode), let modules = section["modules"]?.string, !modules.isEmpty, section["devices"] == nil else {
                    throw ConvoyError.invalidConfiguration("\(source): [[placement]] number \(index + 1): comm must be \"ps\" or \"allreduce\", with modules = \"pattern\" and no devices")
                }
                return ModulePlacement(modules: modules, devices: "", comm: mode)
            }
            guard let modules = section["modules"]?.string, !modules.isEmpty, let devices = section["devices"]?.string, !devices.isEmpty else {
                throw ConvoyError.invalidConfiguration("\(source): [[placement]] number \(index + 1) needs modules = \"pattern\" and devices = \"cpu:0,cpu:1\" (both non-empty strings)")
            }
            return ModulePlacement(modules: modules, devices: devices)
        }
    }

    /// Applies a flag's text, read as the setting's type ("3e-4" for a number, "12" for an integer). Errors
    /// name the flag: "--steps: -5 is out of range; use a value in 1...100000000".
    public static func applyFlag(_ flag: String, _ text: String, to configuration: inout TrainingConfiguration) throws {
        guard let setting = byFlag[flag] else { throw unknownFlag(flag) }
        do {
            try setting.apply(&configuration, try setting.type.value(fromFlag: text))
        } catch {
            throw ConvoyError.invalidConfiguration("\(flag): \(error.message)")
        }
    }

    /// The configuration as a TOML document (the effective configuration written beside a run's outputs).
    public static func tomlText(_ configuration: TrainingConfiguration) -> String {
        var sections: [(String, [String])] = []
        for setting in all {
            guard let value = setting.read(configuration) else { continue }
            let lastDot = setting.key.lastIndex(of: ".")!
            let parts = [String(setting.key[..<lastDot]), String(setting.key[setting.key.index(after: lastDot)...])]
            let line: String
            switch value {
            case .text(let text) where setting.type == .integerList:
                line = "\(parts[1]) = [\(text.split(separator: ",").joined(separator: ", "))]"
            case .text(let text):
                let escaped = text.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"")
                line = "\(parts[1]) = \"\(escaped)\""
            case .real(let number): line = "\(parts[1]) = \(number)"
            case .boolean(let flag): line = "\(parts[1]) = \(flag)"
            default: line = "\(parts[1]) = \(value)"
            }
            if let index = sections.firstIndex(where: { $0.0 == parts[0] }) { sections[index].1.append(line) } else { sections.append((parts[0], [line])) }
        }
        let placementSections = configuration.placements.map { placement -> String in
            func quoted(_ text: String) -> String { "\"" + text.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"") + "\"" }
            if let role = placement.role { return "[[placement]]\nrole = \(quoted(role))\ndevices = \(quoted(placement.devices))\n" }
            if let comm = placement.comm { return "[[placement]]\nmodules = \(quoted(placement.modules))\ncomm = \(quoted(comm))\n" }
            return "[[placement]]\nmodules = \(quoted(placement.modules))\ndevices = \(quoted(placement.devices))\n"
        }
        return (sections.map { "[\($0.0)]\n" + $0.1.joined(separator: "\n") + "\n" } + placementSections).joined(separator: "\n")
    }

    /// Loads defaults, then `configFile` (if any), then flag overrides, and validates the result.
    public static func resolve(configFile: String?, flags: [(flag: String, value: String)]) throws -> TrainingConfiguration {
        var configuration = TrainingConfiguration()
        if let configFile {
            guard let data = FileManager.default.contents(atPath: configFile), let text = String(data: data, encoding: .utf8) else {
                throw ConvoyError.io("cannot read --config \(configFile)")
            }
            try apply(toml: text, source: configFile, to: &configuration)
        }
        for (flag, value) in flags { try applyFlag(flag, value, to: &configuration) }
        // What the user set (by flag, or to a value other than the default in the file) decides which shape
        // settings may conflict with an --init-from directory.
        let defaults = TrainingConfiguration()
        let explicitlySet = Set(flags.compactMap { byFlag[$0.flag]?.key } + all.filter { $0.read(configuration) != $0.read(defaults) }.map(\.key))
        try configuration.adoptInitialModel(explicitlySet: explicitlySet)
        try configuration.adoptTokenizerVocabulary()
        // --data switches the dataset to text, so an explicit `--dataset arithmetic` beside it is a contradiction.
        if flags.contains(where: { $0.flag == "--dataset" && $0.value == "arithmetic" }), let path = configuration.dataPath {
            throw TrainingConfiguration.contradictoryDataset(path)
        }
        try configuration.validate()
        return configuration
    }
}
