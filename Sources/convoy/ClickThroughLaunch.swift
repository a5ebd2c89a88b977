import ConvoyComm
import ConvoyParallel
import ConvoyTensor
import ConvoyTrain
import Foundation

/// `convoy train --model ctr`: starts the ranks (Local: `--dp` workers + `--ps-servers` server threads; under
/// mpirun: every process, the last S of them servers) and prints worker 0's summary.
enum ClickThroughLaunch {
    static func train(_ configuration: TrainingConfiguration, resume: String?, display: ProgressDisplay) throws {
        let summary: ClickThroughSummary
        switch try CommunicationBackend.resolve(configuration.backend) {
        case .local:
            let ranks = try configuration.clickThroughLocalWorldSize
            let threads = configuration.threads ?? ComputePool.defaultThreadCount
            if ranks == 1 {
                ComputePool.setSharedThreadCount(threads)
                summary = try ClickThroughTrainer(configuration: configuration, resume: resume, display: display).run()
            } else {
                let summaries = try LocalWorld.run(size: ranks, threadsPerRank: max(1, threads / ranks)) { group in
                    try ClickThroughTrainer(configuration: configuration, world: group, resume: resume, display: display).run()
                }
                summary = summaries[0]
            }
        case .mpi:
            let world = try MPIRuntime.initialize().worldGroup()
            if let threads = configuration.threads { ComputePool.setSharedThreadCount(threads) }
            let result = try ClickThroughTrainer(configuration: configuration, world: world, resume: resume, display: display).run()
            guard result.role == "worker 0" else { return }
            summary = result
        }
        var lines = [String(format: "trained %d steps in %@ (%.0f samples/s); final loss %.4f", summary.steps, ProgressDisplay.duration(summary.seconds),
                            summary.samplesPerSecond, summary.finalLoss)]
        if let auc = summary.validationAUC, let logLoss = summary.validationLogLoss {
            let best = summary.bestAchievableAUC.map { String(format: " (best achievable %.4f: the hidden model's own AUC)", $0) } ?? ""
            lines.append(String(format: "validation AUC %.4f%@; log loss %.4f", auc, best, logLoss))
        }
        if try configuration.serverCount > 0 {
            lines.append("staleness \(configuration.staleness): max observed \(summary.maxStalenessObserved); worker 0 pulled \(summary.bytesPulled) B, pushed \(summary.bytesPushed) B")
        }
        lines.append("checkpoint: \(summary.checkpoint ?? "-"); metrics: \(configuration.output)/metrics.jsonl")
        for line in lines { try display.message(line) }
    }
}
