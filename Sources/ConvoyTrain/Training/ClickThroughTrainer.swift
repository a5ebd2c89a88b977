import ConvoyComm
import ConvoyNN
import ConvoyParallel
import ConvoyTensor
import Foundation

/// What a finished click-through run reports (per rank: a worker's view, or a server's statistics).
public struct ClickThroughSummary: Sendable {
    /// "single", "worker w" or "server s".
    public var role: String
    public var steps: Int
    /// The last step's mean logistic loss (over the global batch when the workers synchronise every step,
    /// else over this worker's share).
    public var finalLoss: Double
    public var validationLogLoss: Double?
    public var validationAUC: Double?
    public var bestAchievableAUC: Double?
    public var seconds: Double
    public var samplesPerSecond: Double
    /// The largest staleness the servers reported for this worker's pulls.
    public var maxStalenessObserved: Int
    /// Bytes this worker pulled and pushed (parameter-server traffic), over all steps.
    public var bytesPulled: Int
    public var bytesPushed: Int
    public var server: ParameterServerStatistics?
    public var checkpoint: String?
}

/// Trains the click-through-rate model: one process, data-parallel workers that all-reduce everything, or
/// workers with parameter servers holding the embedding tables (and, with `--comm ps`, the dense MLP).
///
/// Every rank of the world constructs one: the last `--ps-servers` ranks become servers and run the request
/// loop; the others are workers. Worker w trains on its contiguous slice of each global batch: it pulls the
/// rows its batch touches (unique ids only), gathers them on the tape, and after backward pushes one gradient
/// row per unique id (``SparseRowGradient``) — no [rows, width] gradient of a table exists anywhere. Dense
/// gradients are pushed (ps) or all-reduced among the workers' own sub-group (hybrid, the existing
/// ``DataParallel``). `--staleness` bounds how far a worker may run ahead (``Staleness``).
public final class ClickThroughTrainer {
    public let configuration: TrainingConfiguration
    public let world: (any ProcessGroup)?
    public let roles: ParameterServerRoles?
    public let dataset: any ClickDataset
    public let model: CTRModel
    public let staleness: Staleness
    /// Workers W.
    public let workers: Int
    /// This rank's worker index (nil: a server).
    public let workerIndex: Int?
    /// The tables, when this rank holds them: all of them (no servers) or its shard (a server).
    public private(set) var tables: [SparseTable] = []
    /// A server's chunk of the dense parameters (`--comm ps`).
    public private(set) var denseShard: SparseTable?
    private let rule: RowOptimizer
    private let workerGroup: (any ProcessGroup)?
    private var client: ParameterServerClient?
    private var server: ParameterServer?
    private var dataParallel: DataParallel?
    private var denseOptimizer: DenseRowOptimizer?
    /// Some dense parameters live on the servers (those in ``serverParameters``).
    private let denseOnServers: Bool
    /// The dense parameters held by the servers (`--comm ps` or a `[[placement]]` with `comm = "ps"`); the
    /// others are all-reduced among the workers and updated by each.
    private let serverParameters: [Parameter]
    /// The dense parameters the workers hold and update (all-reduced), by name.
    private let workerParameters: [(name: String, parameter: Parameter)]
    /// Called at the start of every step of worker w (tests slow one worker down with it).
    private let stepHook: (@Sendable (_ worker: Int, _ step: Int) -> Void)?
    private let display: ProgressDisplay?

    /// Builds this rank's part (collective over `world`: every rank constructs its trainer).
    /// - Parameters:
    ///   - dataset: the examples (default: the configuration's — a Criteo TSV file or generated data).
    ///   - resume: a checkpoint to continue from (written by a run of the same model, seed and `--comm`, with
    ///     any number of servers).
    ///   - stepHook: called at the start of every step with (worker, step).
    public init(configuration: TrainingConfiguration, world: (any ProcessGroup)? = nil, dataset given: (any ClickDataset)? = nil,
                resume: String? = nil, display: ProgressDisplay? = nil, stepHook: (@Sendable (Int, Int) -> Void)? = nil) throws {
        try configuration.validate()
        guard configuration.model == "ctr" else { throw ConvoyError.invalidConfiguration("ClickThroughTrainer trains --model ctr, not \(configuration.model)") }
        // Servers and workers alike: every rank must have resolved the same configuration (collective).
        _ = try RunAgreement.establish(configuration, group: world)
        self.configuration = configuration
        self.world = world
        self.stepHook = stepHook
        let worldSize = world?.size ?? 1, rank = world?.rank ?? 0
        staleness = try configuration.parsedStaleness()
        rule = try configuration.rowOptimizer()
        roles = try configuration.clickThroughRoles(worldSize: worldSize)
        workers = roles?.workerCount ?? worldSize
        dataset = try given ?? configuration.makeClickDataset()
        guard dataset.vocabularySizes == configuration.ctrVocabularySizes else {
            throw ConvoyError.invalidConfiguration("the data's tables (\(dataset.vocabularySizes.count)) do not match the model's")
        }
        model = try CTRModel(configuration.ctrConfiguration, seed: configuration.seed)
        let named = model.namedParameters()
        serverParameters = named.filter { configuration.denseSynchronisation(of: $0.name) == "ps" }.map(\.parameter)
        let reduced = named.filter { configuration.denseSynchronisation(of: $0.name) != "ps" }
        workerParameters = reduced
        let serverLayout = named.filter { configuration.denseSynchronisation(of: $0.name) == "ps" }
            .map { ParameterServerCheckpoint.DenseParameter(name: $0.name, shape: $0.parameter.shape) }
        denseOnServers = !serverParameters.isEmpty
        if let roles { workerIndex = roles.workerIndex(ofRank: rank) } else { workerIndex = rank }
        self.display = workerIndex == 0 ? display : nil
        // The workers' own group (collective over the world; servers take part and get nil).
        if let roles, let world {
            workerGroup = try world.subgroup(ranks: roles.workerRanks, name: "workers")
        } else {
            workerGroup = world
        }
        let saved = try resume.map { try ClickThroughCheckpoint.resumePoint($0, resumedBy: configuration) }
        startStep = saved?.step ?? 0
        let reader = try saved.map { try ShardedCheckpointReader(directory: $0.directory) }
        let initializer = RowInitializer(seed: configuration.seed)
        let sizes = configuration.ctrVocabularySizes, width = configuration.ctrEmbeddingWidth
        let denseValues = serverParameters.flatMap { $0.toArray() }
        if let roles, let serverIndex = roles.serverIndex(ofRank: rank) {
            tables = sizes.enumerated().map { table, rows in
                SparseTable(table: table, rows: rows, width: width, shardIndex: serverIndex, shardCount: roles.serverCount, optimizer: rule, initializer: initializer)
            }
            if denseOnServers {
                let range = ChunkLayout.range(total: denseValues.count, parts: roles.serverCount, rank: serverIndex)
                denseShard = SparseTable(table: -1, denseValues: Array(denseValues[range]), optimizer: rule)
            }
            if let reader {
                try ParameterServerCheckpoint.load(tables: tables, from: reader)
                if let denseShard {
                    try ParameterServerCheckpoint.load(dense: serverLayout, range: ChunkLayout.range(total: denseValues.count, parts: roles.serverCount, rank: serverIndex),
                                                       values: denseShard.values, state: denseShard.state, from: reader)
                }
            }
            let frozen = configuration
            server = try ParameterServer(group: world!, roles: roles, tables: tables, dense: denseShard, staleness: staleness,
                                         learningRate: { frozen.learningRateSchedule.learningRate(at: $0) }, startClock: startStep, denseParameters: serverLayout)
            return
        }
        if let roles, let world {
            client = try ParameterServerClient(group: world, roles: roles, tableRows: sizes, tableWidths: Array(repeating: width, count: sizes.count),
                                               denseCount: denseOnServers ? denseValues.count : 0, staleness: staleness)
        } else {
            tables = sizes.enumerated().map { SparseTable(table: $0, rows: $1, width: width, optimizer: rule, initializer: initializer) }
        }
        if !reduced.isEmpty { denseOptimizer = DenseRowOptimizer(parameters: reduced.map(\.parameter), rule: rule) }
        if let reader {
            try ParameterServerCheckpoint.load(tables: tables, from: reader)
            try ParameterServerCheckpoint.load(dense: reduced, states: denseOptimizer?.states ?? [], from: reader)
        }
        if !reduced.isEmpty, let workerGroup, workerGroup.size > 1 { dataParallel = try DataParallel(module: ParameterSubset(reduced), group: workerGroup) }
    }

    /// The step training starts from (0, or the resumed checkpoint's).
    public let startStep: Int

    /// Whether this rank is a parameter server.
    public var isServer: Bool { server != nil }

    /// This worker's examples of `step` (a contiguous slice of the global batch), checked against the tables.
    func examples(step: Int) throws -> [ClickExample] {
        let share = configuration.batch / workers, first = step * configuration.batch + (workerIndex ?? 0) * share
        return try (first..<(first + share)).map { index in
            let example = dataset.trainingExample(index)
            try dataset.check(example, index: index)
            return example
        }
    }

    /// Runs the server loop (a server) or trains, evaluates and saves (a worker).
    public func run() throws -> ClickThroughSummary {
        if let server {
            let statistics = try server.run()
            return ClickThroughSummary(role: "server \(server.serverIndex)", steps: configuration.steps, finalLoss: .nan, seconds: 0, samplesPerSecond: 0,
                                       maxStalenessObserved: statistics.maxStaleness, bytesPulled: 0, bytesPushed: 0, server: statistics)
        }
        let isLeader = workerIndex == 0
        // Nothing is written before the first batch has been checked.
        _ = try examples(step: startStep)
        let outputLock = isLeader ? try RunDirectory.claim(for: configuration, resuming: startStep > 0) : nil
        defer { withExtendedLifetime(outputLock) {} }
        var metrics: MetricsLog?
        if isLeader {
            try AtomicFile.write(Data(TrainingSettings.tomlText(configuration).utf8), to: configuration.output + "/config.toml")
            metrics = try MetricsLog(directory: configuration.output)
            try RunPlanSummary(worldSize: workers + (roles?.serverCount ?? 0), mesh: [], features: [], layout: layoutSummary, parameters: model.parameterCount,
                               model: "CTR: \(model.configuration.tableCount) embedding tables").write(into: configuration.output)
        }
        try display?.message("training the CTR model on \(dataset.summary); \(configuration.steps) steps of \(configuration.batch); \(layoutSummary)")
        let start = DispatchTime.now().uptimeNanoseconds
        func elapsed() -> Double { Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9 }
        var lastLoss = Double.nan
        for step in startStep..<configuration.steps {
            stepHook?(workerIndex!, step)
            let loss = try trainStep(step)
            guard loss.isFinite else {
                throw ConvoyError.invalidConfiguration("the loss became \(loss) at step \(step + 1); lower --lr (now \(configuration.learningRate))")
            }
            lastLoss = loss
            let done = step + 1
            if done % configuration.logEvery == 0 || done == configuration.steps {
                try metrics?.write(["step": done, "loss": loss, "lr": Double(configuration.learningRateSchedule.learningRate(at: step)),
                                    "samples_per_s": Double((done - startStep) * configuration.batch) / max(elapsed(), 1e-9), "elapsed_s": elapsed()])
                let rate = Double((done - startStep) * configuration.batch) / max(elapsed(), 1e-9)
                try display?.step(done, of: configuration.steps, loss: loss, tokensPerSecond: rate,
                                  learningRate: Double(configuration.learningRateSchedule.learningRate(at: step)), elapsed: elapsed(),
                                  remaining: Double((configuration.steps - done) * configuration.batch) / max(rate, 1e-9), unit: "samples/s")
            }
            if isLeader && configuration.evalEvery > 0 && done % configuration.evalEvery == 0 && done < configuration.steps {
                let (logLoss, auc) = try evaluate(dataset.validationExamples, afterStep: done)
                try metrics?.write(["step": done, "val_logloss": logLoss, "val_auc": auc, "elapsed_s": elapsed()])
                try display?.message(String(format: "step %d: validation AUC %.4f, log loss %.4f", done, auc, logLoss))
            }
            if isLeader && configuration.checkpointEvery > 0 && done % configuration.checkpointEvery == 0 && done < configuration.steps {
                try ClickThroughCheckpoint.save(trainer: self, client: client, step: done, to: configuration.periodicCheckpointDirectory)
            }
        }
        let seconds = elapsed()
        var summary = ClickThroughSummary(
            role: roles == nil && workers == 1 ? "single" : "worker \(workerIndex!)", steps: configuration.steps, finalLoss: lastLoss,
            bestAchievableAUC: dataset.bestAchievableAUC, seconds: seconds,
            samplesPerSecond: Double((configuration.steps - startStep) * configuration.batch) / max(seconds, 1e-9),
            maxStalenessObserved: client?.maxStalenessObserved ?? 0, bytesPulled: client?.bytesPulled ?? 0, bytesPushed: client?.bytesPushed ?? 0)
        if isLeader {
            let (logLoss, auc) = try evaluate(dataset.validationExamples, afterStep: configuration.steps)
            summary.validationLogLoss = logLoss
            summary.validationAUC = auc
            var record: [String: Any] = ["step": configuration.steps, "val_logloss": logLoss, "val_auc": auc, "max_staleness_observed": summary.maxStalenessObserved]
            if let best = dataset.bestAchievableAUC { record["best_auc"] = best }
            try metrics?.write(record)
            try ClickThroughCheckpoint.save(trainer: self, client: client, step: configuration.steps, to: configuration.finalCheckpointDirectory)
            summary.checkpoint = configuration.finalCheckpointDirectory
        }
        try client?.stop()
        return summary
    }

    /// One optimizer step of this worker; returns the mean loss (global when the workers synchronise).
    func trainStep(_ step: Int) throws -> Double {
        let batch = try examples(step: step)
        let lookups = (0..<model.configuration.tableCount).map { table in SparseLookup(ids: batch.map { $0.ids[table] }) }
        let unique = lookups.map(\.uniqueIDs)
        let pulled = try rows(for: unique, step: step, dense: denseOnServers)
        let leaves = pulled.map { rows -> Tensor in
            rows.requiresGrad = true
            return rows
        }
        let loss = CTRModel.logisticLoss(logits: logits(batch, lookups: lookups, rows: leaves), labels: batch.map(\.label))
        try loss.backward()
        try dataParallel?.finishGradientSynchronization()
        let gradients = zip(unique, leaves).map { SparseRowGradient(rows: $0, values: $1.grad ?? Tensor.zeros($1.shape)) }
        let rate = configuration.learningRateSchedule.learningRate(at: step)
        if let client {
            let dense = denseOnServers ? serverParameters.flatMap { $0.grad?.toArray() ?? Array(repeating: 0, count: $0.count) } : nil
            try client.push(gradients, dense: dense, clock: step)
        } else if let workerGroup, workerGroup.size > 1 {
            try allReduceTables(gradients, step: step, learningRate: rate)
        } else {
            for (table, gradient) in zip(tables, gradients) {
                withExtendedLifetime(gradient.values) { table.apply(gradient.rows, gradients: gradient.values.contiguousFloats, scale: 1, learningRate: rate) }
            }
        }
        denseOptimizer?.step(learningRate: rate)
        if let dataParallel {
            // The all-reduced gradients stay views into data parallelism's buffer.
            dataParallel.zeroGradients()
            for parameter in serverParameters { parameter.grad = nil }
        } else {
            model.zeroGradients()
        }
        var value = Double(loss.scalarValue)
        // The global mean when the workers move in lockstep anyway (BSP, or an all-reduce every step).
        if let workerGroup, workerGroup.size > 1, staleness.isSynchronous || dataParallel != nil {
            let total = Tensor(shape: [1], values: [Float(value)])
            try workerGroup.allReduce(total, operation: .average)
            value = Double(total.scalarValue)
        }
        return value
    }

    /// The rows `ids[t]` of every table [unique, width] (from the servers or the local tables); with `dense`,
    /// the dense parameters pulled from the servers are written into the model first.
    private func rows(for ids: [[Int32]], step: Int, dense: Bool, evaluation: Bool = false) throws -> [Tensor] {
        if let client {
            let pulled = try client.pull(ids, dense: dense, clock: step, requiredSlowestClock: evaluation ? step : nil)
            if let values = pulled.dense {
                var offset = 0
                for parameter in serverParameters {
                    values.withUnsafeBufferPointer { parameter.contiguousFloats.update(from: $0.baseAddress! + offset, count: parameter.count) }
                    offset += parameter.count
                }
            }
            return pulled.rows
        }
        return Self.read(tables, ids: ids)
    }

    private func logits(_ batch: [ClickExample], lookups: [SparseLookup], rows: [Tensor]) -> Tensor {
        let dense = Tensor(shape: [batch.count, model.configuration.denseFeatures], values: batch.flatMap(\.dense))
        return model.logits(dense: dense, embedded: zip(lookups, rows).map { $0.gather($1) })
    }

    /// Local tables' rows `ids[t]` as [unique, width] tensors.
    public static func read(_ tables: [SparseTable], ids: [[Int32]]) -> [Tensor] {
        zip(tables, ids).map { table, ids in
            let rows = Tensor.zeros([ids.count, table.width])
            table.read(ids, into: rows.floatPointer)
            return rows
        }
    }

    /// Without servers and with several workers: every table's gradient is all-reduced whole (what
    /// `dense_allreduce_bytes_per_step` measures), then the rows the global batch touched are updated.
    private func allReduceTables(_ gradients: [SparseRowGradient], step: Int, learningRate: Float) throws {
        let global = (step * configuration.batch..<((step + 1) * configuration.batch)).map { dataset.trainingExample($0) }
        for (index, (table, gradient)) in zip(tables, gradients).enumerated() {
            let full = Tensor.zeros([table.rows, table.width])
            let values = gradient.values.contiguous()
            for (i, id) in gradient.rows.enumerated() {
                (full.floatPointer + Int(id) * table.width).update(from: values.floatPointer + i * table.width, count: table.width)
            }
            try workerGroup!.allReduce(full, operation: .average)
            let touched = SparseLookup(ids: global.map { $0.ids[index] }).uniqueIDs
            let rows = Tensor.zeros([touched.count, table.width])
            for (i, id) in touched.enumerated() {
                (rows.floatPointer + i * table.width).update(from: full.floatPointer + Int(id) * table.width, count: table.width)
            }
            table.apply(touched, gradients: rows.floatPointer, scale: 1, learningRate: learningRate)
        }
    }

    /// Log loss and AUC on `examples` of the model after `step` steps (worker 0; the servers answer once every
    /// worker has pushed that many steps).
    public func evaluate(_ examples: [ClickExample], afterStep step: Int) throws -> (logLoss: Double, auc: Double) {
        var first = true
        return try Self.evaluate(model: model, examples: examples) { ids in
            defer { first = false }
            return try rows(for: ids, step: step, dense: denseOnServers && first, evaluation: true)
        }
    }

    /// Log loss and AUC of `model` on `examples`, in batches of 1024 whose table rows `rows` supplies.
    public static func evaluate(model: CTRModel, examples: [ClickExample], rows: ([[Int32]]) throws -> [Tensor]) throws -> (logLoss: Double, auc: Double) {
        var probabilities: [Double] = []
        for start in stride(from: 0, to: examples.count, by: 1024) {
            let batch = Array(examples[start..<min(examples.count, start + 1024)])
            let lookups = (0..<model.configuration.tableCount).map { table in SparseLookup(ids: batch.map { $0.ids[table] }) }
            let pulled = try rows(lookups.map(\.uniqueIDs))
            let dense = Tensor(shape: [batch.count, model.configuration.denseFeatures], values: batch.flatMap(\.dense))
            let logits = withNoGrad { model.logits(dense: dense, embedded: zip(lookups, pulled).map { $0.gather($1) }) }.toArray()
            probabilities += logits.map { 1 / (1 + Foundation.exp(-Double($0))) }
        }
        let labels = examples.map(\.label)
        return (BinaryClassificationMetrics.logLoss(probabilities: probabilities, labels: labels),
                BinaryClassificationMetrics.auc(scores: probabilities, labels: labels))
    }

    /// What this worker writes into a checkpoint: the tables when it holds them whole (no servers), and the
    /// dense parameters the workers hold with their optimizer state (the servers write the rest).
    func checkpointSources() -> [CheckpointShardWriter.Source] {
        ParameterServerCheckpoint.sources(tables: tables) + ParameterServerCheckpoint.sources(dense: workerParameters, states: denseOptimizer?.states ?? [])
    }

    /// The layout in words (progress line, checkpoint index).
    public var layoutSummary: String {
        guard let roles else { return workers > 1 ? "CTR, all-reduce over \(workers) workers" : "CTR, one process" }
        return "CTR, \(workers) workers + \(roles.serverCount) servers (table rows by id mod \(roles.serverCount)), \(staleness.modeName), dense \(denseOnServers ? "on the servers" : "all-reduced")"
    }
}

/// Some of a model's parameters as a module of their own: the dense parameters the workers all-reduce when
/// others live on the servers.
final class ParameterSubset: Module {
    private let named: [(name: String, parameter: Parameter)]

    init(_ named: [(name: String, parameter: Parameter)]) {
        self.named = named
        super.init()
    }

    override var localParameters: [(name: String, parameter: Parameter)] { named }
}
