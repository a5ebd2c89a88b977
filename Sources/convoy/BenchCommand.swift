import ArgumentParser

/// `convoy bench …`: benchmarks that print a table, or JSON for scripts.
struct BenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Benchmarks (each prints a table, or --json for scripts).",
        subcommands: [BenchTrainCommand.self, BenchOpsCommand.self, BenchGEMMCommand.self, BenchCommCommand.self, BenchDDPCommand.self, BenchZeROCommand.self, BenchPipelineCommand.self, BenchCheckpointCommand.self, BenchPSCommand.self, BenchTPCommand.self, BenchTokenizeCommand.self])
}
