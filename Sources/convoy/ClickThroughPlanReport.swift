import ConvoyTrain
import Foundation

/// `convoy plan --model ctr`'s output: roles, each server's table bytes, and the bytes a step moves through
/// the servers against what all-reducing the tables would move.
enum ClickThroughPlanReport {
    static func text(_ plan: ClickThroughPlan) -> String {
        let bytes = PlanCommand.bytes, grouped = PlanCommand.grouped
        var lines: [String] = []
        if let roles = plan.roles {
            lines.append("CTR on parameter servers: \(plan.worldSize) ranks = \(plan.workers) workers + \(roles.serverCount) servers (Local; under mpirun the world is the process count)")
            lines.append("  servers: ranks \(roles.serverRanks.map(String.init).joined(separator: ", ")) (server s holds the rows id mod \(roles.serverCount) = s of every table)")
            lines.append("  workers: ranks \(roles.workerRanks.map(String.init).joined(separator: ", ")) (\(plan.examplesPerWorker) examples each per step)")
        } else {
            lines.append("CTR without servers: \(plan.workers) worker\(plan.workers == 1 ? "" : "s") holding every table\(plan.workers > 1 ? ", all-reducing every table's gradient" : "")")
        }
        let rows = plan.tableRows.reduce(0, +)
        lines.append("tables: \(plan.tableRows.count), \(grouped(rows)) rows in all, dim \(plan.width); optimizer \(plan.optimizer) (\(plan.stateFloatsPerRow) float\(plan.stateFloatsPerRow == 1 ? "" : "s") of row state)")
        lines.append("table bytes per \(plan.roles == nil ? "worker" : "server"): \(bytes(plan.serverTableBytes)) = rows·dim·(4 + optimizer state)/\(plan.roles?.serverCount ?? 1)")
        lines.append("dense MLP: \(grouped(plan.denseElements)) parameters, \(grouped(plan.denseElementsOnServers)) on the servers, \(grouped(plan.denseElements - plan.denseElementsOnServers)) all-reduced among the workers")
        lines.append("per worker and step:")
        if plan.roles != nil {
            let ratio = Double(plan.parameterServerBytesPerWorkerStep) / Double(max(plan.tableAllReduceBytesPerWorkerStep, 1))
            lines.append("  pull + push ≤ \(bytes(plan.parameterServerBytesPerWorkerStep)) (every id of the batch distinct; skewed ids move less — convoy bench ps measures it)")
            lines.append("  all-reducing the tables instead: \(bytes(plan.tableAllReduceBytesPerWorkerStep)) = 2·(n−1)/n·Σ rows·dim·4 (ratio ≤ \(String(format: "%.4f", ratio)))")
        } else {
            lines.append("  table all-reduce: \(bytes(plan.workers > 1 ? plan.tableAllReduceBytesPerWorkerStep : 0))")
        }
        lines.append("  dense all-reduce: \(bytes(plan.denseAllReduceBytesPerWorkerStep))")
        return lines.joined(separator: "\n")
    }

    static func json(_ plan: ClickThroughPlan) -> String {
        let fields: [(String, String)] = [
            ("model", "\"ctr\""), ("world", "\(plan.worldSize)"), ("workers", "\(plan.workers)"), ("servers", "\(plan.roles?.serverCount ?? 0)"),
            ("server_ranks", "[\((plan.roles?.serverRanks ?? []).map(String.init).joined(separator: ","))]"),
            ("worker_ranks", "[\((plan.roles?.workerRanks ?? Array(0..<plan.workers)).map(String.init).joined(separator: ","))]"),
            ("server_table_bytes_formula", "\(plan.serverTableBytes)"), ("dense_parameters", "\(plan.denseElements)"),
            ("dense_parameters_on_servers", "\(plan.denseElementsOnServers)"),
            ("ps_bytes_per_worker_step_max", "\(plan.parameterServerBytesPerWorkerStep)"),
            ("table_allreduce_bytes_per_worker_step", "\(plan.tableAllReduceBytesPerWorkerStep)"),
            ("dense_allreduce_bytes_per_worker_step", "\(plan.denseAllReduceBytesPerWorkerStep)"),
        ]
        return "{" + fields.map { "\"\($0.0)\":\($0.1)" }.joined(separator: ",") + "}"
    }
}
