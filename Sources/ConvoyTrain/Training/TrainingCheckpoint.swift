import ConvoyNN
import ConvoyParallel
import ConvoyTensor
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A training checkpoint directory, sharded (``ConvoyParallel/CheckpointIndex``): one safetensors file of
/// pieces per rank (parameter values and optimizer state, each element stored once), `index.json` listing every
/// tensor's pieces (written last), `trainer.json` (the trainer state) and `placement.json` (the layout's
/// placements, for people); a final checkpoint also holds the model in Hugging Face GPT-2 form
/// (`model.safetensors`, `config.json`), written from the pieces one tensor at a time.
///
/// Saving never damages the last good checkpoint: the new one is assembled completely in a temporary
/// sibling directory — every rank writing its own file there — every file and the directory are fsynced,
/// and only then is it renamed into place. Replacing an existing checkpoint takes two renames (old aside,
/// new in); a crash between them leaves the previous checkpoint under its aside name, which
/// ``resolvedDirectory(_:)`` falls back to.
public enum TrainingCheckpoint {
    public static let trainerFileName = "trainer.json"

    /// A stage at which a save can be made to fail, to test that a failed save leaves the previous checkpoint
    /// intact.
    public enum SaveStage: Sendable {
        /// After the ranks wrote their pieces, before the index.
        case afterPieces
        /// With everything written, before the rename.
        case beforeRename
    }

    /// What ``load(from:into:)`` read besides the weights.
    public struct Contents {
        public var state: TrainerState
        public var optimizerState: OptimizerState
        public var index: CheckpointIndex
    }

    static func asidePath(_ directory: String) -> String { directory + ".previous" }

    /// Writes a checkpoint of `model` and `optimizer` (whole, from one process) with `state` to `directory`,
    /// atomically — the one-rank case of what ``ConvoyTrain/Trainer`` does on every rank.
    public static func save(model: any LanguageModel, optimizer: (any Optimizer)?, state: TrainerState, to directory: String,
                            exportWeights: Bool = true, failingAt failure: SaveStage? = nil) throws {
        let temporary = try prepareTemporaryDirectory(for: directory, tag: CheckpointTemporary.tag(unique: String(UInt32.random(in: 0...UInt32.max))))
        do {
            let slices = model.namedParameters().map { CheckpointSlice(whole: $0.parameter, name: $0.name) }
            try CheckpointShardWriter.write(slices: slices, optimizerState: optimizer?.stateViews() ?? OptimizerState(), rank: 0, of: 1, into: temporary)
        } catch {
            try? FileManager.default.removeItem(atPath: temporary)
            throw error
        }
        try publish(temporary: temporary, ranks: 1, state: state, layout: "one process", model: model, exportWeights: exportWeights,
                    to: directory, failingAt: failure)
    }

    /// Completes a checkpoint whose `ranks` ranks have written their pieces into `temporary` (the leader calls
    /// it): merges their piece lists into the index, writes the trainer state, `extraFiles` and (with
    /// `exportWeights`) the Hugging Face export of `model` read back from the pieces, then the index — last —
    /// and renames the directory into place. On failure `temporary` is removed and any previous checkpoint
    /// at `directory` is left as it was.
    ///
    /// - Parameters:
    ///   - writers: the ranks that wrote pieces (default: all); `model` is needed only with `exportWeights`.
    public static func publish(temporary: String, ranks: Int, writers: [Int]? = nil, state: TrainerState, layout: String, model: (any LanguageModel)?,
                               exportWeights: Bool, extraFiles: [String: Data] = [:], to directory: String, failingAt failure: SaveStage? = nil) throws {
        let target = URL(fileURLWithPath: directory).standardizedFileURL
        let parent = target.deletingLastPathComponent().path
        var published = false
        defer { if !published { try? FileManager.default.removeItem(atPath: temporary) } }

        if failure == .afterPieces { throw ConvoyError.io("simulated failure while saving \(directory)") }
        let index = try CheckpointIndexAssembler.assemble(in: temporary, ranks: ranks, writers: writers, step: state.step, samples: state.dataPosition, layout: layout)
        for (name, contents) in extraFiles { try AtomicFile.write(contents, to: temporary + "/" + name) }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        try AtomicFile.write(try encoder.encode(state), to: temporary + "/" + trainerFileName)
        if exportWeights, let model {
            // One parameter at a time, read from the pieces: no rank holds the whole model for the export either.
            let reader = ShardedCheckpointReader(directory: temporary, index: index)
            try model.exportWeights(to: temporary, shape: { try reader.entry($0).shape }) { try reader.readWhole($0) }
        }
        try AtomicFile.write(try index.encoded(), to: temporary + "/" + CheckpointIndex.fileName)
        try AtomicFile.syncDirectory(temporary)
        if failure == .beforeRename { throw ConvoyError.io("simulated failure while saving \(directory)") }

        // Only a Convoy checkpoint (or nothing) is ever replaced, and only a checkpoint's aside copy removed.
        try RunDirectory.checkReplaceable(checkpoint: target.path)
        let aside = asidePath(target.path)
        try RunDirectory.checkReplaceable(checkpoint: aside)
        try? FileManager.default.removeItem(atPath: aside)
        let hadPrevious = FileManager.default.fileExists(atPath: target.path)
        if hadPrevious, rename(target.path, aside) != 0 {
            throw ConvoyError.io("could not move the previous checkpoint \(target.path) aside: \(String(cString: strerror(errno)))")
        }
        guard rename(temporary, target.path) == 0 else {
            let reason = String(cString: strerror(errno))
            if hadPrevious { _ = rename(aside, target.path) }
            throw ConvoyError.io("could not move the new checkpoint into \(target.path): \(reason)")
        }
        published = true
        try AtomicFile.syncDirectory(parent)
        if hadPrevious { try? FileManager.default.removeItem(atPath: aside) }
    }

    /// Creates (empty) the temporary sibling directory a checkpoint of `directory` is assembled in, after
    /// removing the temporaries dead processes left (``CheckpointTemporary``). The name depends only on
    /// `tag` (see ``CheckpointTemporary/tag(pid:unique:)``), so every rank of a sharded save can compute it.
    @discardableResult
    public static func prepareTemporaryDirectory(for directory: String, tag: String) throws -> String {
        let target = URL(fileURLWithPath: directory).standardizedFileURL
        let parent = target.deletingLastPathComponent().path
        try FileManager.default.createDirectory(atPath: parent, withIntermediateDirectories: true)
        CheckpointTemporary.removeStale(for: directory)
        let temporary = temporaryDirectoryPath(for: directory, tag: tag)
        try? FileManager.default.removeItem(atPath: temporary)
        try FileManager.default.createDirectory(atPath: temporary, withIntermediateDirectories: false)
        return temporary
    }

    /// The path ``prepareTemporaryDirectory(for:tag:)`` uses.
    public static func temporaryDirectoryPath(for directory: String, tag: String) -> String {
        let target = URL(fileURLWithPath: directory).standardizedFileURL
        return target.deletingLastPathComponent().path + "/.\(target.lastPathComponent).tmp-\(tag)"
    }

    /// The directory to read: `directory`, or its aside copy if a save was interrupted between renames.
    public static func resolvedDirectory(_ directory: String) throws -> String {
        var isDirectory: ObjCBool = false
        if FileManager.default.fileExists(atPath: directory, isDirectory: &isDirectory), isDirectory.boolValue { return directory }
        let aside = asidePath(URL(fileURLWithPath: directory).standardizedFileURL.path)
        if FileManager.default.fileExists(atPath: aside, isDirectory: &isDirectory), isDirectory.boolValue { return aside }
        throw ConvoyError.io("checkpoint directory \(directory) does not exist")
    }

    /// Reads the trainer state of the checkpoint in `directory` (already resolved).
    public static func readState(from directory: String) throws -> TrainerState {
        let trainerPath = directory + "/" + trainerFileName
        guard let trainerData = FileManager.default.contents(atPath: trainerPath) else {
            throw ConvoyError.malformedFile(path: trainerPath, reason: "missing: \(directory) is not a training checkpoint (it has no trainer.json)")
        }
        let state = try TrainerState.decode(trainerData, path: trainerPath)
        guard state.formatVersion == 1 else {
            throw ConvoyError.incompatible("\(trainerPath) has format version \(state.formatVersion); this Convoy reads version 1")
        }
        return state
    }

    /// Reads the trainer state of a checkpoint, loads its weights into the whole of `model` (one process) and
    /// returns the optimizer state keyed by parameter name, after checking that everything matches.
    public static func load(from directory: String, into model: any LanguageModel) throws -> Contents {
        let directory = try resolvedDirectory(directory)
        let state = try readState(from: directory)
        let reader = try ShardedCheckpointReader(directory: directory)
        let slices = model.namedParameters().map { CheckpointSlice(whole: $0.parameter, name: $0.name) }
        let optimizerState = try reader.load(parametersInto: slices, optimizerStateOf: slices)
        return Contents(state: state, optimizerState: optimizerState, index: reader.index)
    }

    /// The GPT a checkpoint holds: from its Hugging Face export when it has one (a final checkpoint), else read
    /// from its pieces (a periodic one) in the shape its trainer state records.
    public static func loadModel(from directory: String) throws -> GPT {
        let directory = try resolvedDirectory(directory)
        if FileManager.default.fileExists(atPath: directory + "/" + GPTCheckpoint.configFileName) { return try GPTCheckpoint.load(from: directory) }
        let state = try readState(from: directory)
        var configuration = TrainingConfiguration()
        try TrainingSettings.apply(toml: state.configuration, source: directory + "/" + trainerFileName, to: &configuration)
        let model = try GPT(configuration.modelConfiguration, seed: 0)
        _ = try load(from: directory, into: model)
        return model
    }
}
