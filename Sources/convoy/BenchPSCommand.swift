import ArgumentParser
import ConvoyComm
import ConvoyNN
import ConvoyParallel
import ConvoyTensor
import ConvoyTrain
import Foundation

/// `convoy bench ps`: parameter-server training of the CTR model on Local ranks (W workers + S server threads)
/// under BSP, SSP and ASP, with the bytes moved per step against an all-reduce of the same tables, the largest
/// staleness observed, and each server's table memory as the allocator counts it against the formula.
struct BenchPSCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ps",
        abstract: "CTR training with parameter servers: throughput, bytes moved vs a dense all-reduce, staleness, server table memory.",
        discussion: """
        Table 0 has --rows rows (default 10^6), the other 25 tables the default 10,000; embedding width 16; Adagrad (Paddle's \
        sparse rule). bytes_pulled/pushed_per_step are per worker (rows, dense values, ids and headers); \
        dense_allreduce_bytes_per_step = 2·(n−1)/n · Σ rows·dim·4 with n = max(W, 2), what one worker would move to all-reduce the same \
        tables. server_table_bytes is the allocator's count of the largest server's table values and optimizer state; the formula is \
        Σ rows·dim·(4 + state bytes per element)/S.
        """)

    @Option(help: "Parameter servers S.") var servers: Int = 2
    @Option(help: "Workers W (default: 1, 2 and 3).") var workers: Int?
    @Option(help: "Staleness K or inf (default: 0, 2 and inf).") var staleness: String?
    @Option(help: "Rows of table 0.") var rows: Int = 1_000_000
    @Option(help: "Dense MLP on the servers (ps: workers run free, so staleness shows) or all-reduced among the workers (hybrid: they move in lockstep).") var comm: String = "ps"
    @Option(help: "Global batch.") var batch: Int = 384
    @Option(help: "Timed steps.") var steps: Int = 20
    @Flag(help: "End with one JSON line of the results.") var json = false

    func validate() throws {
        for (name, value) in [("--servers", servers), ("--rows", rows), ("--batch", batch), ("--steps", steps)] where value <= 0 {
            throw ValidationError("\(name) must be positive, got \(value)")
        }
        if let workers, workers <= 0 { throw ValidationError("--workers must be positive, got \(workers)") }
        if let staleness { _ = try Staleness(parsing: staleness) }
        guard ["ps", "hybrid"].contains(comm) else { throw ValidationError("--comm must be ps or hybrid, got '\(comm)'") }
    }

    func run() throws {
        let workerCounts = workers.map { [$0] } ?? [1, 2, 3]
        let modes = staleness.map { [$0] } ?? ["0", "2", "inf"]
        var results: [[String: Any]] = []
        print("mode        W  S  samples/s  pulled B/step  pushed B/step  allreduce B/step  ratio     max stale  server table B  formula B")
        for mode in modes {
            for count in workerCounts {
                let result = try measure(workers: count, staleness: mode)
                results.append(result)
                let mode = (result["mode"] as! String).padding(toLength: 10, withPad: " ", startingAt: 0)
                print(String(format: "%@ %2d %2d %10.0f %14.0f %14.0f %17.0f %9.5f %9d %15d %10d", mode, count, servers,
                             result["samples_per_s"] as! Double, result["bytes_pulled_per_step"] as! Double, result["bytes_pushed_per_step"] as! Double,
                             result["dense_allreduce_bytes_per_step"] as! Double, result["bytes_ratio"] as! Double,
                             result["max_staleness_observed"] as! Int, result["server_table_bytes"] as! Int, result["server_table_bytes_formula"] as! Int))
            }
        }
        if json {
            let data = try JSONSerialization.data(withJSONObject: ["results": results], options: [.sortedKeys])
            print(String(decoding: data, as: UTF8.self))
        }
    }

    private func measure(workers: Int, staleness: String) throws -> [String: Any] {
        var configuration = TrainingConfiguration()
        configuration.model = "ctr"
        configuration.optimizer = "adagrad"
        configuration.learningRate = Double(RowOptimizer.paddleSparseAdagradLearningRate)
        configuration.minLearningRate = 0
        configuration.schedule = "constant"
        configuration.ctrVocabulary = [rows] + Array(repeating: 10_000, count: 25)
        configuration.ctrValidation = 1024
        configuration.batch = batch / workers * workers
        configuration.steps = steps
        configuration.logEvery = steps
        configuration.psServers = servers
        configuration.dp = workers
        configuration.staleness = staleness
        configuration.comm = comm
        configuration.overwrite = true
        let output = FileManager.default.temporaryDirectory.path + "/convoy-bench-ps-\(getpid())"
        configuration.output = output
        defer { try? FileManager.default.removeItem(atPath: output) }
        let frozen = configuration
        let ranks = workers + servers
        let outcomes = try LocalWorld.run(size: ranks, threadsPerRank: max(1, ComputePool.defaultThreadCount / ranks)) { group -> (ClickThroughSummary, Int) in
            let trainer = try ClickThroughTrainer(configuration: frozen, world: group)
            var measured = 0
            if trainer.isServer {
                // The allocator's count of what this rank holds, less the MLP every rank builds and (--comm ps) the
                // server's chunk of it: the tables' values and row state.
                measured = TensorAllocator.shared.liveBytes(of: .parameters, owner: group.rank) + TensorAllocator.shared.liveBytes(of: .optimizerState, owner: group.rank)
                    - trainer.model.parameterCount * 4 - (trainer.denseShard?.byteCount ?? 0)
            }
            return (try trainer.run(), measured)
        }
        let workerSummaries = outcomes.map(\.0).filter { $0.role.hasPrefix("worker") }
        let tableElements = configuration.ctrVocabularySizes.reduce(0) { $0 + $1 } * configuration.ctrEmbeddingWidth
        let formula = ClickThroughPlan.serverTableBytes(rows: configuration.ctrVocabularySizes, width: configuration.ctrEmbeddingWidth,
                                                        stateFloatsPerRow: try configuration.rowOptimizer().stateCount(width: configuration.ctrEmbeddingWidth), servers: servers)
        let n = Double(max(workers, 2))
        let allReduce = 2 * (n - 1) / n * Double(tableElements * 4)
        let pulled = Double(workerSummaries.map(\.bytesPulled).reduce(0, +)) / Double(workers * steps)
        let pushed = Double(workerSummaries.map(\.bytesPushed).reduce(0, +)) / Double(workers * steps)
        let slowest = workerSummaries.map(\.seconds).max() ?? 1
        return [
            "mode": (try Staleness(parsing: staleness)).modeName, "comm": comm, "workers": workers, "servers": servers, "rows_table0": rows,
            "samples_per_s": Double(configuration.batch * steps) / max(slowest, 1e-9),
            "bytes_pulled_per_step": pulled, "bytes_pushed_per_step": pushed, "dense_allreduce_bytes_per_step": allReduce,
            "bytes_ratio": (pulled + pushed) / allReduce,
            "max_staleness_observed": outcomes.map { $0.0.maxStalenessObserved }.max() ?? 0,
            "server_table_bytes": outcomes.map(\.1).max() ?? 0, "server_table_bytes_formula": formula,
            "validation_auc": workerSummaries.first?.validationAUC ?? 0,
        ]
    }
}
