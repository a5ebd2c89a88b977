import ArgumentParser
import ConvoyNN
import ConvoyParallel
import ConvoyTensor
import ConvoyTrain
import Foundation

/// `convoy report RUN_DIR`: one self-contained HTML page about a training run — its curves, configuration,
/// parallel plan and, when it was traced, each rank's time per phase.
struct ReportCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "report",
        abstract: "Write an HTML report of a training run: loss, validation, learning rate and throughput curves, the configuration and parallel plan, per-rank time per phase.",
        discussion: """
            Reads RUN_DIR's metrics.jsonl, config.toml and plan.json, and the Chrome trace of a run trained with \
            --trace (the path config.toml names, or RUN_DIR/trace.json, with the PATH.rankN.json files of MPI ranks). \
            The page has inline CSS and SVG only: no scripts, fonts or anything else fetched, so it opens offline.
            """)

    @Argument(help: "The run's --output directory.") var runDirectory: String
    @Option(help: "Where to write the page (default: RUN_DIR/report.html).") var output: String?

    func run() throws {
        let report = try RunReport(directory: runDirectory)
        let path = output ?? runDirectory + "/report.html"
        try RunDirectory.checkWritableFile(path, flag: "--output")
        try AtomicFile.write(Data(report.html(planDetail: planDetail(report)).utf8), to: path)
        try StandardOutput.write("report: \(path)\n")
    }

    /// The table `convoy plan` prints for the run's configuration at the world size it ran with; nil for runs
    /// without a GPT plan (the CTR trainer) or when the configuration no longer plans (an older format).
    func planDetail(_ report: RunReport) -> String? {
        guard let text = report.configurationText, let summary = report.plan, !summary.mesh.isEmpty else { return nil }
        var training = TrainingConfiguration()
        guard (try? TrainingSettings.apply(toml: text, source: "config.toml", to: &training)) != nil,
              let settings = try? training.parallelSettings(),
              let plan = try? ParallelPlan(settings: settings, worldSize: summary.worldSize, model: training.modelConfiguration.shape),
              let kind = try? ZeROMemoryPlan.OptimizerKind(name: training.optimizer) else { return nil }
        let model = training.modelConfiguration
        let pipeline = plan.mesh.pp > 1
            ? (try? PipelinePlan(model: model, options: plan.settings.pipeline, dataParallelSize: plan.dataParallelSize, microBatches: plan.settings.microBatches,
                                 microBatchSize: plan.settings.microBatchSize ?? max(training.batch / (plan.dataParallelSize * plan.settings.microBatches), 1)))
            : nil
        return (try? LayoutReport(plan: plan, model: model, pipeline: pipeline, optimizer: kind))?.table()
    }
}
