import ConvoyNN
import ConvoyParallel
import ConvoyTensor

/// The layout of a `--model ctr` run, worked out from the configuration alone (no table is built): which ranks
/// are servers and workers, what each server holds, and what a step moves — what `convoy plan --model ctr`
/// prints. It is checked by the functions `convoy train` uses (``TrainingConfiguration/validate()``,
/// ``TrainingConfiguration/clickThroughRoles(worldSize:)``), so a plan is printed only for what training accepts.
public struct ClickThroughPlan: Sendable {
    public let worldSize: Int
    /// nil: no servers (one process, or workers all-reducing everything).
    public let roles: ParameterServerRoles?
    public let workers: Int
    public let tableRows: [Int]
    public let width: Int
    public let optimizer: String
    /// Floats of lazy optimizer state per table row (``RowOptimizer/stateCount(width:)``).
    public let stateFloatsPerRow: Int
    /// Elements of the dense MLP, and how many of them live on the servers (`--comm ps`, or placements).
    public let denseElements: Int
    public let denseElementsOnServers: Int
    /// Examples per worker and step.
    public let examplesPerWorker: Int

    /// Plans `configuration` in a world of `worldSize` ranks (default: the Local world, `--dp` + servers).
    public init(configuration: TrainingConfiguration, worldSize: Int? = nil) throws {
        try configuration.validate()
        guard configuration.model == "ctr" else {
            throw ConvoyError.invalidConfiguration("a parameter-server plan is for --model ctr, not \(configuration.model)")
        }
        self.worldSize = try worldSize ?? configuration.clickThroughLocalWorldSize
        roles = try configuration.clickThroughRoles(worldSize: self.worldSize)
        workers = roles?.workerCount ?? self.worldSize
        tableRows = configuration.ctrVocabularySizes
        width = configuration.ctrEmbeddingWidth
        optimizer = configuration.optimizer
        stateFloatsPerRow = try configuration.rowOptimizer().stateCount(width: width)
        let named = try CTRModel(configuration.ctrConfiguration, seed: configuration.seed).namedParameters()
        denseElements = named.reduce(0) { $0 + $1.parameter.count }
        denseElementsOnServers = roles == nil ? 0 : named.filter { configuration.denseSynchronisation(of: $0.name) == "ps" }.reduce(0) { $0 + $1.parameter.count }
        examplesPerWorker = configuration.batch / workers
    }

    /// Bytes of table values and row state each server holds by the formula rows·dim·4 + rows·state·4, over S
    /// (what `convoy bench ps` reports as `server_table_bytes_formula`); the whole tables without servers.
    public var serverTableBytes: Int {
        Self.serverTableBytes(rows: tableRows, width: width, stateFloatsPerRow: stateFloatsPerRow, servers: roles?.serverCount ?? 1)
    }

    /// rows·dim·(4 + optimizer state)/S, summed over the tables.
    public static func serverTableBytes(rows: [Int], width: Int, stateFloatsPerRow: Int, servers: Int) -> Int {
        let total = rows.reduce(0, +)
        return (total * width * 4 + total * stateFloatsPerRow * 4) / max(servers, 1)
    }

    /// Bytes one worker pulls and pushes per step at most (every id of its examples distinct in every table):
    /// per table ≤ min(examples, rows) unique ids, each pulled as an id and a row and pushed as an id and a row
    /// gradient — 2·u·(dim + 1)·4 — plus the dense parameters on the servers pulled and their gradient pushed.
    /// Skewed (Zipf) ids move far fewer; `convoy bench ps` measures them.
    public var parameterServerBytesPerWorkerStep: Int {
        guard roles != nil else { return 0 }
        let unique = tableRows.reduce(0) { $0 + min($1, examplesPerWorker) }
        return 2 * unique * (width + 1) * 4 + 2 * denseElementsOnServers * 4
    }

    /// What one worker would move per step to all-reduce the whole tables instead: 2·(n−1)/n·Σ rows·dim·4 with
    /// n = max(W, 2) (as `convoy bench ps` reports `dense_allreduce_bytes_per_step`).
    public var tableAllReduceBytesPerWorkerStep: Int {
        let n = max(workers, 2)
        return 2 * (n - 1) * tableRows.reduce(0, +) * width * 4 / n
    }

    /// What one worker moves per step all-reducing the dense parameters the workers hold: 2·(W−1)/W·elements·4.
    public var denseAllReduceBytesPerWorkerStep: Int {
        workers > 1 ? 2 * (workers - 1) * (denseElements - denseElementsOnServers) * 4 / workers : 0
    }
}
