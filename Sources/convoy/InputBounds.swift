import ArgumentParser

/// The ranges of the command-line numbers that size work, so that no flag can start a run that would take
/// hours or overflow the arithmetic on it; the same for every command that has the flag.
enum InputBounds {
    /// Compute threads (as `training.threads`).
    static let threads = 1...1024
    /// Tokens `convoy generate` produces in one run.
    static let generatedTokens = 0...100_000
    /// Local ranks of `convoy bench` (threads of one process).
    static let localRanks = 1...256
    /// Model shape and parallel sizes, as `convoy train` accepts them (TrainingSettings.all).
    static let layers = 1...256, width = 1...65536, heads = 1...1024, context = 1...1_048_576, vocabulary = 1...1_000_000
    static let ranks = 1...4096, microBatches = 1...65536, microBatchSize = 1...1_000_000, virtualStages = 1...1024

    /// Throws a usage error naming the flag and its range unless `value` lies in `range`.
    static func check(_ value: Int, _ range: ClosedRange<Int>, flag: String, why: String? = nil) throws {
        guard !range.contains(value) else { return }
        throw ValidationError("\(flag) \(value) is out of range; use a value in \(range.lowerBound)...\(range.upperBound)" + (why.map { " (\($0))" } ?? ""))
    }
}
