import ArgumentParser
import ConvoyNN
import ConvoyParallel
import ConvoyTensor
import ConvoyTrain
import Foundation

/// `convoy checkpoint …`: look into, verify, export and import sharded checkpoints.
struct CheckpointCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "checkpoint",
        abstract: "Inspect, verify, export (Hugging Face GPT-2) and import sharded checkpoints.",
        subcommands: [CheckpointInfoCommand.self, CheckpointVerifyCommand.self, CheckpointExportCommand.self, CheckpointImportCommand.self])
}

/// `convoy checkpoint info DIR`: step, layout, tensors and sizes.
struct CheckpointInfoCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "info", abstract: "Show a checkpoint's step, sample cursor, layout, tensors and sizes.")

    @Argument(help: "Checkpoint directory.") var directory: String
    @Flag(help: "List every tensor with its shape and pieces.") var tensors = false

    func run() throws {
        let resolved = try TrainingCheckpoint.resolvedDirectory(directory)
        let index = try CheckpointIndex.read(from: resolved)
        print("checkpoint \(resolved)")
        print("  step \(index.step), samples \(index.samples)")
        print("  written by \(index.ranks) rank\(index.ranks == 1 ? "" : "s"): \(index.layout)")
        for role in [CheckpointIndex.Role.parameter, .master, .optimizer] {
            let names = index.names(of: role)
            guard !names.isEmpty else { continue }
            let elements = names.reduce(0) { $0 + index.tensors[$1]!.count }
            let bytes = names.reduce(0) { $0 + index.tensors[$1]!.pieces.reduce(0) { $0 + $1.byteEnd - $1.byteStart } }
            let pieces = names.reduce(0) { $0 + index.tensors[$1]!.pieces.count }
            print("  \(role.rawValue): \(names.count) tensors, \(elements) elements, \(Self.size(bytes)) in \(pieces) pieces")
        }
        if !index.optimizerScalars.isEmpty {
            print("  optimizer scalars: " + index.optimizerScalars.keys.sorted().map { "\($0) \(index.optimizerScalars[$0]!)" }.joined(separator: ", "))
        }
        print("  total \(Self.size(index.storedBytes))")
        guard tensors else { return }
        for name in index.tensors.keys.sorted() {
            let entry = index.tensors[name]!
            let files = Set(entry.pieces.map(\.file)).count
            print("  \(name)  \(entry.dtype) \(entry.shape)  \(entry.pieces.count) piece\(entry.pieces.count == 1 ? "" : "s") in \(files) file\(files == 1 ? "" : "s")")
        }
    }

    static func size(_ bytes: Int) -> String {
        bytes >= 1 << 20 ? String(format: "%.1f MiB", Double(bytes) / 1_048_576) : String(format: "%.1f KiB", Double(bytes) / 1024)
    }
}

/// `convoy checkpoint verify DIR`: every checksum, and every element of every tensor stored exactly once.
struct CheckpointVerifyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "verify", abstract: "Check every piece's checksum and that every element of every tensor is stored exactly once.")

    @Argument(help: "Checkpoint directory.") var directory: String

    func run() throws {
        let resolved = try TrainingCheckpoint.resolvedDirectory(directory)
        let report = try CheckpointVerifier.verify(directory: resolved)
        print("ok: \(resolved): \(report.tensors) tensors in \(report.pieces) pieces over \(report.files) files (\(CheckpointInfoCommand.size(report.bytes))); every checksum matches and every element is stored exactly once")
    }
}

/// `convoy checkpoint export --hf DIR OUT`: a Hugging Face GPT-2 directory written from the pieces.
struct CheckpointExportCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "export", abstract: "Write a checkpoint's model as a Hugging Face GPT-2 directory (model.safetensors + config.json), one tensor at a time.")

    @Flag(help: "Hugging Face GPT-2 format (the one export format).") var hf = false
    @Argument(help: "Checkpoint directory.") var directory: String
    @Argument(help: "Output directory (new or empty).") var output: String

    func validate() throws {
        guard hf else { throw ValidationError("give --hf: the Hugging Face GPT-2 directory is the export format") }
    }

    func run() throws {
        let resolved = try TrainingCheckpoint.resolvedDirectory(directory)
        let state = try TrainingCheckpoint.readState(from: resolved)
        var configuration = TrainingConfiguration()
        try TrainingSettings.apply(toml: state.configuration, source: resolved + "/" + TrainingCheckpoint.trainerFileName, to: &configuration)
        try CheckpointImportCommand.checkEmptyOutput(output)
        let reader = try ShardedCheckpointReader(directory: resolved)
        let parameters = reader.index.names(of: .parameter).map { (name: $0, shape: reader.index.tensors[$0]!.shape, dtype: DType.float32) }
        try GPTCheckpoint.export(configuration.modelConfiguration, parameters: parameters, to: output) { try reader.readWhole($0) }
        // The tokenizer files a fine-tuning run copied in go along, so AutoTokenizer loads the export too.
        for (name, contents) in try TokenizerFiles.files(of: resolved) { try AtomicFile.write(contents, to: output + "/" + name) }
        print("wrote \(output)/\(GPTCheckpoint.weightsFileName) and \(GPTCheckpoint.configFileName) (\(parameters.count) tensors, step \(state.step))")
    }
}

/// `convoy checkpoint import --hf DIR OUT`: a sharded checkpoint (step 0, weights only) from a Hugging Face
/// GPT-2 directory, to start a run from with `convoy train --resume OUT`.
struct CheckpointImportCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "import", abstract: "Make a checkpoint (step 0, weights only) from a Hugging Face GPT-2 directory; start training from it with convoy train --resume.")

    @Flag(help: "Hugging Face GPT-2 format (the one import format).") var hf = false
    @Argument(help: "Hugging Face GPT-2 directory (model.safetensors + config.json).") var directory: String
    @Argument(help: "Output checkpoint directory (new or empty).") var output: String

    func validate() throws {
        guard hf else { throw ValidationError("give --hf: a Hugging Face GPT-2 directory is the import format") }
    }

    func run() throws {
        try Self.checkEmptyOutput(output)
        let model = try GPTCheckpoint.load(from: directory)
        var configuration = TrainingConfiguration()
        configuration.layers = model.configuration.layers
        configuration.heads = model.configuration.heads
        configuration.dModel = model.configuration.width
        configuration.context = model.configuration.contextLength
        let state = TrainerState(step: 0, seed: configuration.seed, dataPosition: 0, configuration: TrainingSettings.tomlText(configuration),
                                 optimizer: TrainerState.weightsOnly)
        try TrainingCheckpoint.save(model: model, optimizer: nil, state: state, to: output, exportWeights: false)
        print("wrote \(output): \(model.parameterCount) parameters of a GPT with \(model.configuration.layers) layers, d_model \(model.configuration.width); train from it with --resume \(output)")
    }

    /// Throws unless `path` does not exist or is an empty directory: export and import never overwrite.
    static func checkEmptyOutput(_ path: String) throws {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else { return }
        guard isDirectory.boolValue, ((try? FileManager.default.contentsOfDirectory(atPath: path)) ?? ["?"]).isEmpty else {
            throw ConvoyError.io("\(path) exists and is not an empty directory; Convoy will not write into it. Choose a new path")
        }
    }
}
