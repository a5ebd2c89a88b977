import ArgumentParser
import ConvoyComm
import ConvoyNN
import ConvoyParallel
import ConvoyTrain
import ConvoyTensor
import Foundation

/// `convoy plan`: the per-rank bytes of parameters, gradients and optimizer state a data-parallel ZeRO
/// configuration needs, from the formulas in DESIGN.md §7 (no model is built).
struct PlanCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "plan",
        abstract: "Print the parallel plan of a configuration: mesh, groups on each axis, each rank's layers and bytes; --rules prints the composition table.",
        discussion: """
            The plan is validated by the same rules as `convoy train` (a configuration train refuses is refused \
            here, with the same message). fp32 parameters and gradients (4 B each); optimizer state 8 B/param for adam/adamw, 4 B for momentum and \
            nesterov, 0 for sgd. Sharded parts hold ⌈Ψ/N⌉ elements per rank. Activations are not counted there. With \
            --pp > 1: the stage-to-layer assignment, parameters per stage, process groups, the simulated bubble and \
            the peak activation memory per stage (an estimate, see PipelinePlan.activationBytes).
            """)

    @Option(help: "Model preset: \(ZeROMemoryPlan.modelPresets.map(\.name).joined(separator: ", ")); or ctr, the click-through-rate model on parameter servers.") var model: String = "gpt-mini"
    @Option(help: "Transformer blocks (overrides the preset).") var layers: Int?
    @Option(name: .customLong("d-model"), help: "Model width (overrides the preset).") var dModel: Int?
    @Option(help: "Attention heads (overrides the preset).") var heads: Int?
    @Option(help: "Context length (overrides the preset).") var context: Int?
    @Option(help: "Vocabulary size (overrides the preset).") var vocab: Int?
    @Option(help: "Data-parallel ranks N.") var dp: Int = 1
    @Option(name: .customLong("zero-stage"), help: "ZeRO stage 0, 1, 2 or 3, or 'all' for the four side by side.") var zeroStage: String = "0"
    @Option(help: "Optimizer: \(ZeROMemoryPlan.OptimizerKind.allCases.map(\.rawValue).joined(separator: ", ")).") var optimizer: String = "adamw"
    @Option(help: "Pipeline stages.") var pp: Int = 1
    @Option(name: .customLong("accumulate-steps"), help: "Micro-batches per step (pipeline).") var accumulateSteps: Int = 8
    @Option(name: .customLong("micro-batch-size"), help: "Sequences per micro-batch (pipeline activation memory).") var microBatchSize: Int = 1
    @Option(help: "Pipeline schedule: gpipe, 1f1b or interleaved-1f1b.") var schedule: String = "1f1b"
    @Option(name: .customLong("virtual-stages"), help: "Model chunks per pipeline rank (interleaved-1f1b).") var virtualStages: Int = 1
    @Option(name: .customLong("stage-layers"), help: "Layers per virtual stage, e.g. 3,3 (default: balanced).") var stageLayers: String?
    @Option(name: .customLong("tp"), help: "Tensor-parallel ranks per layer.") var tp: Int = 1
    @Option(name: .customLong("sequence-parallel"), help: "Sequence parallelism with --tp (true or false).") var sequenceParallel: Bool = false
    @Option(name: .customLong("mesh-order"), help: "Mesh axis order, fastest-varying first.") var meshOrder: String = "tp-dp-pp"
    @Option(name: .customLong("ps-servers"), help: "--model ctr: parameter servers S (the Local world is --dp workers + S).") var psServers: Int?
    @Option(help: "--model ctr: ps, hybrid or allreduce (as convoy train).") var comm: String?
    @Option(help: "--model ctr: staleness K or inf (as convoy train).") var staleness: String?
    @Option(help: "--model ctr: global batch (as convoy train).") var batch: Int?
    @Option(name: .customLong("ctr-vocabulary"), help: "--model ctr: rows of each table, one value or 26 (as convoy train).") var ctrVocabulary: String?
    @Option(name: .customLong("ctr-embedding-dim"), help: "--model ctr: embedding width (as convoy train).") var ctrEmbeddingDim: Int?
    @Option(name: .customLong("ctr-hidden"), help: "--model ctr: MLP hidden width (as convoy train).") var ctrHidden: Int?
    @Option(help: "A training TOML file: plan its model, [parallel] sections and [[placement]] instead of the flags above.") var config: String?
    @Flag(help: "Print the composition rules table (which parallel features combine, under which conditions).") var rules = false
    @Flag(help: "Print JSON lines instead of tables: the layout (or the rules), then one line per ZeRO stage.") var json = false

    func validate() throws {
        let bounds: [(Int?, ClosedRange<Int>, String)] = [(layers, InputBounds.layers, "--layers"), (dModel, InputBounds.width, "--d-model"), (heads, InputBounds.heads, "--heads"),
                                     (context, InputBounds.context, "--context"), (vocab, InputBounds.vocabulary, "--vocab"), (dp, InputBounds.ranks, "--dp"),
                                     (pp, InputBounds.ranks, "--pp"), (accumulateSteps, InputBounds.microBatches, "--accumulate-steps"),
                                     (microBatchSize, InputBounds.microBatchSize, "--micro-batch-size"), (virtualStages, InputBounds.virtualStages, "--virtual-stages")]
        for (value, range, flag) in bounds {
            if let value { try InputBounds.check(value, range, flag: flag) }
        }
    }

    /// Throws unless every byte count the plan computes fits in an Int: within the flags' ranges a huge
    /// context × micro-batch × width can still exceed 2⁶³ bytes, which would trap rather than print.
    func checkSizes(_ configuration: GPTConfiguration) throws {
        let t = Double(configuration.contextLength), d = Double(configuration.width), a = Double(configuration.heads)
        let b = Double(microBatchSize), v = Double(configuration.vocabularySize)
        let activations = (Double(configuration.layers) * 2 * (34 * t * b * d + 5 * a * t * t * b) + 8 * t * b * v) * Double(accumulateSteps * virtualStages)
        let state = 16 * (v * d + t * d + Double(configuration.layers) * (12 * d * d + 13 * d) + 2 * d)
        guard max(activations, state) < 0x1p62 else {
            throw ConvoyError.invalidConfiguration(String(format: "the plan's byte counts (about %.1e B) exceed what can be counted (2^62 B); use a smaller --context, --micro-batch-size, --accumulate-steps, --d-model or --layers", max(activations, state)))
        }
    }

    /// The model shape: the preset with any explicit flags applied.
    func modelConfiguration() throws -> GPTConfiguration {
        var configuration = try ZeROMemoryPlan.modelPreset(named: model)
        if let layers { configuration.layers = layers }
        if let dModel { configuration.width = dModel }
        if let heads { configuration.heads = heads }
        if let context { configuration.contextLength = context }
        if let vocab { configuration.vocabularySize = vocab }
        try configuration.validate()
        try checkSizes(configuration)
        return configuration
    }

    /// The stages `--zero-stage` asks for.
    func requestedStages() throws -> [Int] {
        if zeroStage.lowercased() == "all" { return Array(ZeROMemoryPlan.stages) }
        guard let stage = Int(zeroStage) else {
            throw ConvoyError.invalidConfiguration("--zero-stage must be 0, 1, 2, 3 or all, got \"\(zeroStage)\"")
        }
        return [stage]
    }

    func run() throws {
        if rules {
            if json { print(RulesReport.json()) } else { print(RulesReport.table()) }
            return
        }
        if let clickThrough = try clickThroughConfiguration() {
            let plan = try ClickThroughPlan(configuration: clickThrough)
            print(json ? ClickThroughPlanReport.json(plan) : ClickThroughPlanReport.text(plan))
            return
        }
        let (configuration, layout, zeroStages) = try parallelPlan()
        let dp = layout.dataParallelSize
        let kind = try ZeROMemoryPlan.OptimizerKind(name: optimizer)
        let plans = try zeroStages.map {
            try ZeROMemoryPlan(parameterCount: configuration.parameterCount, dataParallelSize: dp, stage: $0, optimizer: kind)
        }
        let pipeline = layout.mesh.pp > 1
            ? try PipelinePlan(model: configuration, options: layout.settings.pipeline, dataParallelSize: dp, microBatches: layout.settings.microBatches,
                               microBatchSize: layout.settings.microBatchSize ?? microBatchSize) : nil
        let report = try LayoutReport(plan: layout, model: configuration, pipeline: pipeline, optimizer: kind)
        let tensorParallel = layout.mesh.tp > 1 ? tensorParallelLine(configuration, plan: layout) : nil
        if json {
            print(report.json())
            for plan in plans { print(Self.jsonLine(plan)) }
            if let tensorParallel { print(tensorParallel.json) }
            return
        }
        print(report.table())
        print("")
        let shape = "\(configuration.layers) layers, d_model \(configuration.width), \(configuration.heads) heads, "
            + "context \(configuration.contextLength), vocab \(configuration.vocabularySize)"
        let explicit = layers != nil || dModel != nil || heads != nil || context != nil || vocab != nil
        print("model: \(model)\(explicit ? " (overridden)" : ""): \(shape)")
        print("Ψ = \(Self.grouped(configuration.parameterCount)) parameters; N = \(dp) data-parallel ranks; "
            + "optimizer \(kind.rawValue) (\(kind.stateBytesPerParameter) B/param state); fp32 parameters and gradients")
        print("per rank (the whole model; with pp > 1 each rank holds its stage's share, above):")
        print(Self.table(plans))
        if let pipeline { printPipelinePlan(pipeline, dp: dp) }
        if let tensorParallel { print(""); print(tensorParallel.text) }
    }

    /// Per-rank parameter bytes under tensor parallelism (GPT's layout: c_attn, c_fc column-parallel, both c_proj
    /// row-parallel with replicated biases, the vocabulary padded to a multiple of tp and cut; norms and wpe
    /// replicated) and the tensor-parallel bytes each rank hands to collectives per step (Megatron's formula).
    func tensorParallelLine(_ configuration: GPTConfiguration, plan: ParallelPlan) -> (text: String, json: String) {
        let t = plan.mesh.tp, h = configuration.width, layers = configuration.layers
        let vocabulary = (configuration.vocabularySize + t - 1) / t * t
        let perLayer = (3 * h * h + 3 * h + h * h + 4 * h * h + 4 * h + 4 * h * h) / t + h + 4 * h + h
        let elements = vocabulary / t * h + configuration.contextLength * h + layers * perLayer + 2 * h
        let sequences = plan.settings.microBatchSize ?? microBatchSize
        let perMicroBatch = TensorParallelCommunication.bytesPerMicroBatch(model: configuration.shape, tp: t, sequenceParallel: plan.settings.sequenceParallel,
                                                                           sequences: sequences, time: configuration.contextLength)
        let perStep = perMicroBatch * plan.settings.microBatches
        let text = "tensor parallel: tp \(t)\(plan.settings.sequenceParallel ? " with sequence parallelism" : ""); per-rank parameters \(Self.bytes(4 * elements)) "
            + "(whole model \(Self.bytes(4 * configuration.parameterCount)); vocabulary padded to \(vocabulary))\n"
            + "tensor-parallel communication per rank and step: \(Self.bytes(perStep)) (\(plan.settings.microBatches) micro-batches of \(sequences) sequence(s) × \(configuration.contextLength) tokens; "
            + (plan.settings.sequenceParallel
               ? "2 all-gathers + 2 reduce-scatters of b·s·h per layer forward, backward the same plus 2 all-gathers of the column-parallel inputs"
               : "2 all-reduces of b·s·h per layer forward and as many backward") + ", plus the embedding, head and loss)"
        let json = "{\"tp\":\(t),\"sequence_parallel\":\(plan.settings.sequenceParallel),\"parameter_bytes_per_rank\":\(4 * elements),\"comm_bytes_per_step\":\(perStep)}"
        return (text, json)
    }

    /// The training configuration of a `--model ctr` plan (the flags as `convoy train` reads them, after
    /// `--config`), or nil for a GPT plan.
    func clickThroughConfiguration() throws -> TrainingConfiguration? {
        let given: [(String, String?)] = [("--ps-servers", psServers.map(String.init)), ("--comm", comm), ("--staleness", staleness), ("--batch", batch.map(String.init)),
                                          ("--ctr-vocabulary", ctrVocabulary), ("--ctr-embedding-dim", ctrEmbeddingDim.map(String.init)),
                                          ("--ctr-hidden", ctrHidden.map(String.init))]
        let ctrFlags = given.compactMap { flag, value in value.map { (flag: flag, value: $0) } }
        let fromConfig = try config.map { try TrainingSettings.resolve(configFile: $0, flags: []) }
        guard model == "ctr" || fromConfig?.model == "ctr" else {
            if let flag = ctrFlags.first?.flag { throw ConvoyError.invalidConfiguration("\(flag) plans the CTR model; add --model ctr") }
            return nil
        }
        var flags: [(flag: String, value: String)] = [(flag: "--model", value: "ctr")] + ctrFlags
        // --dp and --optimizer have plan defaults; a config file's values win unless they are given.
        if config == nil || dp != 1 { flags.append((flag: "--dp", value: String(dp))) }
        if config == nil || optimizer != "adamw" { flags.append((flag: "--optimizer", value: optimizer)) }
        return try TrainingSettings.resolve(configFile: config, flags: flags)
    }

    /// The plan the flags (or `--config`) describe, validated by the same rules as training, and the ZeRO stages
    /// to tabulate.
    func parallelPlan() throws -> (GPTConfiguration, ParallelPlan, [Int]) {
        if let config {
            let training = try TrainingSettings.resolve(configFile: config, flags: [])
            let settings = try training.parallelSettings()
            let world = settings.placements.isEmpty ? (settings.dataParallelSize ?? 1) * settings.pipeline.stages * settings.tensorParallelSize : nil
            let plan = try ParallelPlan(settings: settings, worldSize: world, model: training.modelConfiguration.shape)
            return (training.modelConfiguration, plan, [training.zeroStage])
        }
        let configuration = try modelConfiguration()
        let stages = try requestedStages()
        for (name, value, limit) in [("--dp", dp, 1 << 20), ("--pp", pp, 1 << 16), ("--tp", tp, 1 << 16), ("--accumulate-steps", accumulateSteps, 1 << 20),
                                     ("--micro-batch-size", microBatchSize, 1 << 20), ("--virtual-stages", virtualStages, 1024)] where !(1...limit).contains(value) {
            throw ConvoyError.invalidConfiguration("\(name) \(value) is out of range; use a value in 1...\(limit)")
        }
        var settings = ParallelSettings()
        settings.dataParallelSize = dp
        settings.tensorParallelSize = tp
        settings.sequenceParallel = sequenceParallel
        settings.order = try DeviceMesh.parseOrder(meshOrder)
        settings.zeroStage = stages.count == 1 ? stages[0] : 0
        settings.pipeline.stages = pp
        settings.pipeline.schedule = try PipelineScheduleKind(parsing: schedule)
        settings.pipeline.virtualStages = virtualStages
        if let stageLayers {
            let counts = stageLayers.split(separator: ",").compactMap { Int($0.trimmingCharacters(in: .whitespaces)) }
            guard counts.count == stageLayers.split(separator: ",").count else {
                throw ConvoyError.invalidConfiguration("--stage-layers must be comma-separated layer counts such as 3,3, got \"\(stageLayers)\"")
            }
            settings.pipeline.stageLayers = counts
        }
        settings.microBatches = accumulateSteps
        let (world, overflow) = dp.multipliedReportingOverflow(by: pp * tp)
        guard !overflow else { throw ConvoyError.invalidConfiguration("dp·pp·tp overflows; use fewer ranks") }
        // 'all' tabulates every ZeRO stage; the layout is checked with each of them.
        for stage in stages {
            settings.zeroStage = stage
            _ = try ParallelPlan(settings: settings, worldSize: world, model: configuration.shape)
        }
        settings.zeroStage = stages.count == 1 ? stages[0] : 0
        return (configuration, try ParallelPlan(settings: settings, worldSize: world, model: configuration.shape), stages)
    }

    func printPipelinePlan(_ plan: PipelinePlan, dp: Int) {
        let pp = plan.mesh.pp, accumulateSteps = plan.schedule.microBatches, microBatchSize = plan.microBatchSize
        let virtualStages = plan.partition.virtualStages
        print("")
        print("pipeline: pp \(pp) × dp \(dp) = \(pp * dp) ranks; \(plan.schedule.kind.rawValue), \(accumulateSteps) micro-batches of \(microBatchSize) sequence(s), \(virtualStages) virtual stage(s) per rank")
        print("stage  layers                          parameters            peak stashed  peak activations (est.)")
        for stage in plan.stages {
            var held = stage.chunks.map { chunk in
                "s\(chunk.virtualStage): h.\(chunk.layers.lowerBound)" + (chunk.layers.count > 1 ? "–\(chunk.layers.upperBound - 1)" : "")
            }
            if stage.holdsEmbeddings { held.insert("embeddings", at: 0) }
            if stage.holdsHead { held.append("ln_f + head") }
            print(String(format: "%5d  %@  %@  %12d  %@", stage.pipelineRank, held.joined(separator: ", ").padding(toLength: max(30, held.joined(separator: ", ").count), withPad: " ", startingAt: 0),
                         Self.grouped(stage.parameters).padding(toLength: 20, withPad: " ", startingAt: 0), stage.peakStashed, Self.bytes(stage.peakActivationBytes)))
        }
        print("groups: pipelines \(plan.pipelineGroups), data-parallel per stage \(plan.dataParallelGroups), embedding \(plan.embeddingGroups)")
        print(String(format: "bubble: %.4f simulated (per-chunk compute, backward = 2 × forward), %.4f by (p−1)/(v·m+p−1)", plan.predictedBubble, plan.formulaBubble))
    }

    /// Rows of bytes, one column per stage.
    static func table(_ plans: [ZeROMemoryPlan]) -> String {
        let rows: [(String, (ZeROMemoryPlan) -> String)] = [
            ("", { "stage \($0.stage)" }),
            ("parameters", { bytes($0.parameterBytes) }),
            ("gradients", { bytes($0.gradientBytes) }),
            ("optimizer state", { bytes($0.optimizerStateBytes) }),
            ("total", { bytes($0.totalBytes) }),
            ("formula", { $0.formula }),
        ]
        let cells = rows.map { row in plans.map(row.1) }
        let labelWidth = rows.map(\.0.count).max() ?? 0
        let columnWidths = plans.indices.map { column in cells.map { $0[column].count }.max() ?? 0 }
        return zip(rows, cells).map { row, values in
            let label = row.0.padding(toLength: labelWidth, withPad: " ", startingAt: 0)
            let columns = zip(values, columnWidths).map { String(repeating: " ", count: $1 - $0.count) + $0 }
            return "  " + label + columns.map { "   " + $0 }.joined()
        }.joined(separator: "\n")
    }

    /// `43376640` as `41.37 MiB (43,376,640 B)`.
    static func bytes(_ count: Int) -> String {
        let units = ["KiB", "MiB", "GiB", "TiB"]
        var value = Double(count), unit = "B"
        for next in units where value >= 1024 {
            value /= 1024
            unit = next
        }
        return unit == "B" ? "\(count) B" : String(format: "%.2f", value) + " \(unit) (\(grouped(count)) B)"
    }

    /// Digits in groups of three: `10,844,160`.
    static func grouped(_ count: Int) -> String {
        let digits = String(count.magnitude)
        var result = ""
        for (index, digit) in digits.enumerated() {
            if index > 0 && (digits.count - index) % 3 == 0 { result.append(",") }
            result.append(digit)
        }
        return (count < 0 ? "-" : "") + result
    }

    /// One JSON object on one line, keys in a fixed order.
    static func jsonLine(_ plan: ZeROMemoryPlan) -> String {
        let fields: [(String, String)] = [
            ("stage", "\(plan.stage)"), ("dp", "\(plan.dataParallelSize)"), ("optimizer", "\"\(plan.optimizer.rawValue)\""),
            ("parameters", "\(plan.parameterCount)"), ("parameter_bytes", "\(plan.parameterBytes)"),
            ("gradient_bytes", "\(plan.gradientBytes)"), ("optimizer_state_bytes", "\(plan.optimizerStateBytes)"),
            ("total_bytes", "\(plan.totalBytes)"),
        ]
        return "{" + fields.map { "\"\($0.0)\":\($0.1)" }.joined(separator: ",") + "}"
    }
}
