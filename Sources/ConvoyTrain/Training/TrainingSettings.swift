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

/// The registry of configuration keys: their TOML names (`section.key`), the flag that overrides each,
/// their type and valid range, and how they are applied. TOML parsing, flag overrides and the effective
/// configuration file all go through it, so a key is validated the same way wherever it comes from.
public enum TrainingSettings {
    /// One configuration key.
    public struct Setting: Sendable {
        /// `section.key`, as in the TOML file.
        public let key: String
        /// The command-line flag that overrides it.
        public let flag: String
        let apply: @Sendable (inout TrainingConfiguration, SettingValue) throws -> Void
        let read: @Sendable (TrainingConfiguration) -> SettingValue?
    }

    private static func fail(_ key: String, _ message: String) -> ConvoyError {
        .invalidConfiguration("\(key): \(message)")
    }

    private static func integer(_ key: String, _ flag: String, _ path: WritableKeyPath<TrainingConfiguration, Int> & Sendable, _ range: ClosedRange<Int>) -> Setting {
        Setting(key: key, flag: flag, apply: { configuration, value in
            guard case .integer(let number) = value else { throw fail(key, "expected an integer, got \(value)") }
            guard range.contains(number) else { throw fail(key, "\(number) is out of range; use a value in \(range.lowerBound)...\(range.upperBound)") }
            configuration[keyPath: path] = number
        }, read: { .integer($0[keyPath: path]) })
    }

    private static func optionalInteger(_ key: String, _ flag: String, _ path: WritableKeyPath<TrainingConfiguration, Int?> & Sendable, _ range: ClosedRange<Int>) -> Setting {
        Setting(key: key, flag: flag, apply: { configuration, value in
            guard case .integer(let number) = value else { throw fail(key, "expected an integer, got \(value)") }
            guard range.contains(number) else { throw fail(key, "\(number) is out of range; use a value in \(range.lowerBound)...\(range.upperBound)") }
            configuration[keyPath: path] = number
        }, read: { $0[keyPath: path].map { .integer($0) } })
    }

    private static func real(_ key: String, _ flag: String, _ path: WritableKeyPath<TrainingConfiguration, Double> & Sendable, _ range: ClosedRange<Double>, openUpper: Bool = false) -> Setting {
        Setting(key: key, flag: flag, apply: { configuration, value in
            let number: Double
            switch value {
            case .real(let x): number = x
            case .integer(let x): number = Double(x)
            default: throw fail(key, "expected a number, got \(value)")
            }
            guard number.isFinite, range.contains(number), !(openUpper && number == range.upperBound) else {
                throw fail(key, "\(number) is out of range; use a value in \(range.lowerBound)...\(range.upperBound)\(openUpper ? " (exclusive)" : "")")
            }
            configuration[keyPath: path] = number
        }, read: { .real($0[keyPath: path]) })
    }

    private static func choice(_ key: String, _ flag: String, _ path: WritableKeyPath<TrainingConfiguration, String> & Sendable, _ options: [String]) -> Setting {
        Setting(key: key, flag: flag, apply: { configuration, value in
            guard case .text(let text) = value else { throw fail(key, "expected a string, got \(value)") }
            guard options.contains(text) else { throw fail(key, "\"\(text)\" is not one of \(options.map { "\"\($0)\"" }.joined(separator: ", "))") }
            configuration[keyPath: path] = text
        }, read: { .text($0[keyPath: path]) })
    }

    private static func path(_ key: String, _ flag: String, _ keyPath: WritableKeyPath<TrainingConfiguration, String> & Sendable) -> Setting {
        Setting(key: key, flag: flag, apply: { configuration, value in
            guard case .text(let text) = value, !text.isEmpty else { throw fail(key, "expected a non-empty path, got \(value)") }
            configuration[keyPath: keyPath] = text
        }, read: { .text($0[keyPath: keyPath]) })
    }

    private static func optionalPath(_ key: String, _ flag: String, _ keyPath: WritableKeyPath<TrainingConfiguration, String?> & Sendable) -> Setting {
        Setting(key: key, flag: flag, apply: { configuration, value in
            guard case .text(let text) = value, !text.isEmpty else { throw fail(key, "expected a non-empty path, got \(value)") }
            configuration[keyPath: keyPath] = text
        }, read: { $0[keyPath: keyPath].map { .text($0) } })
    }

    private static func boolean(_ key: String, _ flag: String, _ path: WritableKeyPath<TrainingConfiguration, Bool> & Sendable) -> Setting {
        Setting(key: key, flag: flag, apply: { configuration, value in
            switch value {
            case .boolean(let flag): configuration[keyPath: path] = flag
            case .text(let text) where ["true", "on", "yes", "1"].contains(text.lowercased()): configuration[keyPath: path] = true
            case .text(let text) where ["false", "off", "no", "0"].contains(text.lowercased()): configuration[keyPath: path] = false
            default: throw fail(key, "expected true or false, got \(value)")
            }
        }, read: { .boolean($0[keyPath: path]) })
    }

    private static func fusion(_ key: String, _ flag: String, _ path: WritableKeyPath<TrainingConfiguration, FusionChoice> & Sendable) -> Setting {
        Setting(key: key, flag: flag, apply: { configuration, value in
            let text: String
            switch value {
            case .text(let word): text = word.lowercased()
            case .boolean(let on): text = on ? "on" : "off"
            default: throw fail(key, "expected \"auto\", \"on\" or \"off\", got \(value)")
            }
            guard let choice = FusionChoice(rawValue: text == "true" ? "on" : text == "false" ? "off" : text) else {
                throw fail(key, "expected \"auto\", \"on\" or \"off\", got \(value)")
            }
            configuration[keyPath: path] = choice
        }, read: { .text($0[keyPath: path].rawValue) })
    }

    /// Every key, in the order the effective configuration is written.
    public static let all: [Setting] = [
        integer("model.layers", "--layers", \.layers, 1...256),
        integer("model.d_model", "--d-model", \.dModel, 1...65536),
        integer("model.heads", "--heads", \.heads, 1...1024),
        integer("model.context", "--context", \.context, 1...1_048_576),
        real("model.dropout", "--dropout", \.dropout, 0...1, openUpper: true),
        choice("data.dataset", "--dataset", \.dataset, ["arithmetic", "text"]),
        Setting(key: "data.path", flag: "--data", apply: { configuration, value in
            guard case .text(let text) = value, !text.isEmpty else { throw fail("data.path", "expected a file path, got \(value)") }
            configuration.dataPath = text
            configuration.dataset = "text"
        }, read: { $0.dataPath.map { .text($0) } }),
        integer("data.digits", "--digits", \.digits, 1...9),
        integer("data.held_out", "--held-out", \.heldOut, 1...1_000_000),
        real("data.validation_fraction", "--validation-fraction", \.validationFraction, 0...0.5),
        Setting(key: "training.seed", flag: "--seed", apply: { configuration, value in
            guard case .integer(let number) = value, number >= 0 else { throw fail("training.seed", "expected a non-negative integer, got \(value)") }
            configuration.seed = UInt64(number)
        }, read: { .integer(Int(truncatingIfNeeded: $0.seed)) }),
        integer("training.steps", "--steps", \.steps, 1...100_000_000),
        integer("training.batch", "--batch", \.batch, 1...1_000_000),
        integer("training.accumulate_steps", "--accumulate-steps", \.accumulateSteps, 1...65536),
        choice("training.optimizer", "--optimizer", \.optimizer, ["adamw", "adam", "sgd", "momentum", "nesterov"]),
        real("training.lr", "--lr", \.learningRate, 0...10),
        real("training.min_lr", "--min-lr", \.minLearningRate, 0...10),
        choice("training.lr_schedule", "--lr-schedule", \.schedule, ["cosine", "constant"]),
        integer("training.warmup", "--warmup", \.warmupSteps, 0...100_000_000),
        real("training.weight_decay", "--weight-decay", \.weightDecay, 0...10),
        real("training.beta1", "--beta1", \.beta1, 0...1, openUpper: true),
        real("training.beta2", "--beta2", \.beta2, 0...1, openUpper: true),
        real("training.momentum", "--momentum", \.momentum, 0...1, openUpper: true),
        real("training.grad_clip", "--grad-clip", \.gradClip, 0...1e9),
        integer("training.eval_every", "--eval-every", \.evalEvery, 0...100_000_000),
        integer("training.eval_batches", "--eval-batches", \.evalBatches, 1...1_000_000),
        integer("training.checkpoint_every", "--checkpoint-every", \.checkpointEvery, 0...100_000_000),
        integer("training.log_every", "--log-every", \.logEvery, 1...100_000_000),
        optionalInteger("training.threads", "--threads", \.threads, 1...1024),
        path("training.output", "--output", \.output),
        optionalPath("training.save", "--save", \.save),
        boolean("training.overwrite", "--overwrite", \.overwrite),
        optionalPath("training.trace", "--trace", \.trace),
        optionalInteger("parallel.dp", "--dp", \.dp, 1...4096),
        Setting(key: "parallel.backend", flag: "--backend", apply: { configuration, value in
            guard case .text(let text) = value, ["local", "mpi"].contains(text) else { throw fail("parallel.backend", "expected \"local\" or \"mpi\", got \(value)") }
            configuration.backend = text
        }, read: { $0.backend.map { .text($0) } }),
        integer("parallel.zero_stage", "--zero-stage", \.zeroStage, 0...3),
        boolean("parallel.ddp.bucketing", "--bucketing", \.ddp.bucketing),
        real("parallel.ddp.first_bucket_cap_mb", "--first-bucket-cap-mb", \.ddp.firstBucketCapMB, 1e-6...1e6),
        real("parallel.ddp.bucket_cap_mb", "--bucket-cap-mb", \.ddp.bucketCapMB, 1e-6...1e6),
        boolean("parallel.ddp.overlap_grad_reduce", "--overlap-grad-reduce", \.ddp.overlapGradReduce),
        fusion("parallel.ddp.fuse_all_reduce", "--fuse-all-reduce", \.ddp.fuseAllReduce),
        fusion("parallel.ddp.fuse_optimizer", "--fuse-optimizer", \.ddp.fuseOptimizer),
        boolean("parallel.ddp.find_unused_parameters", "--find-unused-parameters", \.ddp.findUnusedParameters),
        boolean("parallel.ddp.overlap_param_gather", "--overlap-param-gather", \.ddp.overlapParamGather),
        boolean("parallel.ddp.reshard_after_forward", "--reshard-after-forward", \.ddp.reshardAfterForward),
        integer("parallel.ddp.buckets_per_group", "--buckets-per-group", \.ddp.bucketsPerGroup, 1...1024),
        integer("parallel.pipeline.pp", "--pp", \.pipeline.stages, 1...4096),
        optionalInteger("parallel.pipeline.micro_batch_size", "--micro-batch-size", \.microBatchSize, 1...1_000_000),
        Setting(key: "parallel.pipeline.schedule", flag: "--schedule", apply: { configuration, value in
            guard case .text(let text) = value else { throw fail("parallel.pipeline.schedule", "expected a string, got \(value)") }
            do { configuration.pipeline.schedule = try PipelineScheduleKind(parsing: text) } catch { throw fail("parallel.pipeline.schedule", "\(error)") }
        }, read: { .text($0.pipeline.schedule.rawValue) }),
        integer("parallel.pipeline.virtual_stages", "--virtual-stages", \.pipeline.virtualStages, 1...1024),
        Setting(key: "parallel.pipeline.stage_layers", flag: "--stage-layers", apply: { configuration, value in
            // A TOML array of integers arrives as text "3,3" (see apply(toml:)), as does the flag.
            guard case .text(let text) = value else { throw fail("parallel.pipeline.stage_layers", "expected layer counts such as [3, 3], got \(value)") }
            let counts = text.split(separator: ",").map { Int($0.trimmingCharacters(in: .whitespaces)) }
            guard !counts.isEmpty, counts.allSatisfy({ ($0 ?? 0) >= 1 }) else {
                throw fail("parallel.pipeline.stage_layers", "expected positive layer counts such as [3, 3] (one per virtual stage), got \(value)")
            }
            configuration.pipeline.stageLayers = counts.map { $0! }
        }, read: { $0.pipeline.stageLayers.map { .text($0.map(String.init).joined(separator: ",")) } }),
    ]

    private static let byKey: [String: Setting] = Dictionary(uniqueKeysWithValues: all.map { ($0.key, $0) })

    /// Sets `key` (e.g. "training.lr") on a configuration, validating type and range.
    public static func apply(_ key: String, _ value: SettingValue, to configuration: inout TrainingConfiguration) throws {
        guard let setting = byKey[key] else {
            throw ConvoyError.invalidConfiguration("unknown key '\(key)'; known keys: \(all.map(\.key).joined(separator: ", "))")
        }
        try setting.apply(&configuration, value)
    }

    /// Applies a TOML document's keys; unknown sections or keys, wrong types and bad values are errors that
    /// name the key (and the file).
    public static func apply(toml text: String, source: String, to configuration: inout TrainingConfiguration) throws {
        let table: TOMLTable
        do {
            table = try TOMLTable(string: text)
        } catch let error as TOMLParseError {
            throw ConvoyError.invalidConfiguration("\(source): \(error.description) at line \(error.source.begin.line), column \(error.source.begin.column)")
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

    /// Applies a flag's text, parsed as the key's type ("3e-4" for a number, "12" for an integer).
    public static func applyFlag(_ flag: String, _ text: String, to configuration: inout TrainingConfiguration) throws {
        guard let setting = all.first(where: { $0.flag == flag }) else {
            throw ConvoyError.invalidConfiguration("unknown flag \(flag)")
        }
        let current = setting.read(configuration)
        let value: SettingValue
        switch current {
        case .integer?:
            guard let number = Int(text) else { throw ConvoyError.invalidConfiguration("\(flag): expected an integer, got '\(text)'") }
            value = .integer(number)
        case .real?:
            guard let number = Double(text) else { throw ConvoyError.invalidConfiguration("\(flag): expected a number, got '\(text)'") }
            value = .real(number)
        case .boolean?:
            value = .text(text)
        default:
            // Optional integers (threads) read as nil before they are set.
            if ["training.threads", "parallel.dp", "parallel.pipeline.micro_batch_size"].contains(setting.key) {
                guard let number = Int(text) else { throw ConvoyError.invalidConfiguration("\(flag): expected an integer, got '\(text)'") }
                value = .integer(number)
            } else {
                value = .text(text)
            }
        }
        do {
            try setting.apply(&configuration, value)
        } catch let error as ConvoyError {
            if case .invalidConfiguration(let message) = error { throw ConvoyError.invalidConfiguration("\(flag) (\(message))") }
            throw error
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
            case .text(let text) where setting.key == "parallel.pipeline.stage_layers":
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
        return sections.map { "[\($0.0)]\n" + $0.1.joined(separator: "\n") + "\n" }.joined(separator: "\n")
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
        // --data switches the dataset to text, so an explicit `--dataset arithmetic` beside it is a contradiction.
        if flags.contains(where: { $0.flag == "--dataset" && $0.value == "arithmetic" }), let path = configuration.dataPath {
            throw TrainingConfiguration.contradictoryDataset(path)
        }
        try configuration.validate()
        return configuration
    }
}
