import ArgumentParser

/// `convoy train` (placeholder until the trainer lands; see the training issue).
struct TrainCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "train", abstract: "Train a GPT.")
    func run() throws { throw ValidationError("not yet implemented") }
}
