import ConvoyComm
import ConvoyNN
import ConvoyParallel
import ConvoyTensor
import ConvoyTrain
import Foundation
import Testing

/// `convoy plan --model ctr`: roles, per-server table bytes and per-step traffic from the configuration, and
/// the same refusals as training.
@Suite(.serialized) struct ClickThroughPlanTests {
    init() { CommunicationTimeout.set(60) }

    /// 3 workers + 2 servers: the last two ranks serve; the table bytes are rows·dim·(4 + state)/S and agree
    /// with what a server's tables hold; the pull + push bound is 2·u·(dim + 1)·4 per worker (u ≤ B/W per
    /// table) plus the dense parameters on the servers.
    @Test(arguments: ["hybrid", "ps"])
    func rolesBytesAndTrafficFollowTheFormulas(comm: String) throws {
        var configuration = clickConfiguration(output: scratchDirectory("ctr-plan"))
        configuration.psServers = 2
        configuration.dp = 3
        configuration.comm = comm
        configuration.optimizer = "adagrad"
        let plan = try ClickThroughPlan(configuration: configuration)
        #expect(plan.worldSize == 5 && plan.roles?.serverRanks == [3, 4] && plan.roles?.workerRanks == [0, 1, 2])
        let rows = 26 * 60, width = 4
        #expect(plan.serverTableBytes == (rows * width * 4 + rows * 1 * 4) / 2)
        // What a server's SparseTables hold (the shards of 60 rows dealt over 2 servers are 30 rows each).
        let held = (0..<26).map { SparseTable(table: $0, rows: 60, width: width, shardIndex: 0, shardCount: 2, optimizer: RowOptimizer(kind: .adagrad), initializer: RowInitializer(seed: 1)).byteCount }
        #expect(held.reduce(0, +) == plan.serverTableBytes)
        let dense = try CTRModel(configuration.ctrConfiguration, seed: 0).parameterCount
        #expect(plan.denseElements == dense && plan.denseElementsOnServers == (comm == "ps" ? dense : 0))
        #expect(plan.parameterServerBytesPerWorkerStep == 2 * 26 * 4 * (width + 1) * 4 + 2 * plan.denseElementsOnServers * 4)
        #expect(plan.tableAllReduceBytesPerWorkerStep == 2 * 2 * rows * width * 4 / 3)
        #expect(plan.denseAllReduceBytesPerWorkerStep == (comm == "ps" ? 0 : 2 * 2 * dense * 4 / 3))
    }

    /// Configurations training refuses are refused by the plan with the very same message (one validation).
    @Test func thePlanRefusesWhatTrainingRefuses() throws {
        let output = scratchDirectory("ctr-plan-refused")
        defer { try? FileManager.default.removeItem(atPath: output) }
        var base = clickConfiguration(output: output)
        base.psServers = 1
        base.dp = 2
        var unevenBatch = base
        unevenBatch.dp = 5
        var negativeStaleness = base
        negativeStaleness.staleness = "-1"
        var psWithoutServers = base
        psWithoutServers.psServers = 0
        psWithoutServers.comm = "ps"
        var tensorParallel = base
        tensorParallel.tp = 2
        for bad in [unevenBatch, negativeStaleness, psWithoutServers, tensorParallel] {
            let planned = #expect(throws: ConvoyError.self) { _ = try ClickThroughPlan(configuration: bad) }
            let trained = #expect(throws: ConvoyError.self) {
                _ = try LocalWorld.run(size: try bad.clickThroughLocalWorldSize, threadsPerRank: 1) { group in
                    try ClickThroughTrainer(configuration: bad, world: group).startStep
                }
            }
            #expect(planned != nil && "\(planned!)" == "\(trained!)")
        }
        #expect(!FileManager.default.fileExists(atPath: output))
    }

    /// The command prints the roles and bytes, and refuses in one line what train refuses.
    @Test func thePlanCommandPrintsRolesAndRefusesLikeTrain() throws {
        let shown = try runConvoy(["plan", "--model", "ctr", "--ps-servers", "2", "--dp", "3", "--batch", "12", "--ctr-vocabulary", "1000", "--optimizer", "adagrad"])
        #expect(shown.status == 0, "\(shown.error)")
        #expect(shown.output.contains("servers: ranks 3, 4") && shown.output.contains("workers: ranks 0, 1, 2"))
        #expect(shown.output.contains("(884,000 B) = rows·dim·(4 + optimizer state)/2"))
        let json = try runConvoy(["plan", "--model", "ctr", "--ps-servers", "2", "--dp", "3", "--batch", "12", "--ctr-vocabulary", "1000", "--optimizer", "adagrad", "--json"])
        #expect(json.output.contains("\"server_ranks\":[3,4]") && json.output.contains("\"server_table_bytes_formula\":884000"))
        let refused = try runConvoy(["plan", "--model", "ctr", "--ps-servers", "1", "--dp", "5", "--batch", "12"])
        #expect(refused.status == 1 && refused.error.contains("not divisible by the 5 workers"))
        let notCTR = try runConvoy(["plan", "--ps-servers", "1"])
        #expect(notCTR.status == 1 && notCTR.error.contains("add --model ctr"))
    }
}
