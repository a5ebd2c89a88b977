import ConvoyNN
import ConvoyTensor
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A training checkpoint directory: the model in Hugging Face GPT-2 form (`model.safetensors`,
/// `config.json`), the optimizer state (`optimizer.safetensors`), and the trainer state (`trainer.json`).
///
/// Saving never damages the last good checkpoint: the new one is written completely into a temporary
/// sibling directory, every file and the directory are fsynced, and only then is it renamed into place.
/// Replacing an existing checkpoint takes two renames (old aside, new in); a crash between them leaves the
/// previous checkpoint under its aside name, which ``load(from:)`` falls back to.
public enum TrainingCheckpoint {
    public static let optimizerFileName = "optimizer.safetensors"
    public static let trainerFileName = "trainer.json"

    /// A stage at which ``save(model:optimizer:state:to:failingAt:)`` can be made to fail, to test that a
    /// failed save leaves the previous checkpoint intact.
    public enum SaveStage: Sendable {
        case afterModel
        case beforeRename
    }

    /// Everything a checkpoint holds.
    public struct Contents {
        public var state: TrainerState
        public var optimizerState: OptimizerState
    }

    static func asidePath(_ directory: String) -> String { directory + ".previous" }

    /// Writes a checkpoint of `model`, `optimizer` and `state` to `directory`, atomically.
    ///
    /// - Parameters:
    ///   - optimizer: the optimizer whose whole state goes into `optimizer.safetensors`; nil when the state is
    ///     sharded and each rank has already written its shard into `temporary` (ZeRO).
    ///   - temporary: a directory prepared with ``prepareTemporaryDirectory(for:tag:)`` that already holds
    ///     other ranks' files; nil to use a fresh one.
    ///   - extraFiles: further files (name → contents), such as a ZeRO layout index.
    public static func save(model: any LanguageModel, optimizer: (any Optimizer)?, state: TrainerState, to directory: String, temporary prepared: String? = nil,
                            extraFiles: [String: Data] = [:], failingAt failure: SaveStage? = nil) throws {
        let target = URL(fileURLWithPath: directory).standardizedFileURL
        let parent = target.deletingLastPathComponent().path
        let temporary = try prepared ?? prepareTemporaryDirectory(for: directory, tag: CheckpointTemporary.tag(unique: String(UInt32.random(in: 0...UInt32.max))))
        var published = false
        defer { if !published { try? FileManager.default.removeItem(atPath: temporary) } }

        try model.saveWeights(to: temporary)
        if failure == .afterModel { throw ConvoyError.io("simulated failure while saving \(directory)") }
        if let optimizer { try writeOptimizerState(optimizer.state(), kind: state.optimizer, to: temporary + "/" + optimizerFileName) }
        for (name, contents) in extraFiles { try AtomicFile.write(contents, to: temporary + "/" + name) }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        try AtomicFile.write(try encoder.encode(state), to: temporary + "/" + trainerFileName)
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

    /// The file holding rank `rank`'s shard of a sharded (ZeRO) optimizer state.
    public static func shardFileName(rank: Int, of ranks: Int) -> String { "optimizer-shard-\(rank)-of-\(ranks).safetensors" }

    /// Writes an optimizer state (tensors, and scalars as metadata) as safetensors.
    public static func writeOptimizerState(_ optimizerState: OptimizerState, kind: String, to path: String) throws {
        var metadata = ["format": "convoy-optimizer", "optimizer": kind]
        for (key, value) in optimizerState.scalars { metadata["scalar." + key] = String(value) }
        try SafeTensors(tensors: optimizerState.tensors, metadata: metadata).write(to: path)
    }

    /// The directory to read: `directory`, or its aside copy if a save was interrupted between renames.
    public static func resolvedDirectory(_ directory: String) throws -> String {
        var isDirectory: ObjCBool = false
        if FileManager.default.fileExists(atPath: directory, isDirectory: &isDirectory), isDirectory.boolValue { return directory }
        let aside = asidePath(URL(fileURLWithPath: directory).standardizedFileURL.path)
        if FileManager.default.fileExists(atPath: aside, isDirectory: &isDirectory), isDirectory.boolValue { return aside }
        throw ConvoyError.io("checkpoint directory \(directory) does not exist")
    }

    /// Reads the trainer and optimizer state of a checkpoint and loads its weights into `model`, after
    /// checking that everything matches; on any error nothing is modified.
    public static func load(from directory: String, into model: any LanguageModel, optimizerFile: String = optimizerFileName) throws -> Contents {
        let directory = try resolvedDirectory(directory)
        let trainerPath = directory + "/" + trainerFileName
        guard let trainerData = FileManager.default.contents(atPath: trainerPath) else {
            throw ConvoyError.malformedFile(path: trainerPath, reason: "missing: \(directory) is not a training checkpoint (it has no trainer.json)")
        }
        let state: TrainerState
        state = try TrainerState.decode(trainerData, path: trainerPath)
        guard state.formatVersion == 1 else {
            throw ConvoyError.incompatible("\(trainerPath) has format version \(state.formatVersion); this Convoy reads version 1")
        }
        try model.checkWeightsCompatible(in: directory)
        let optimizerPath = directory + "/" + optimizerFile
        guard FileManager.default.fileExists(atPath: optimizerPath) else {
            throw ConvoyError.incompatible("checkpoint \(directory) has no \(optimizerFile): it was saved with another data-parallel or ZeRO layout (resharding is not supported yet)")
        }
        let optimizerFile = try SafeTensors.read(contentsOf: optimizerPath)
        for (name, tensor) in optimizerFile.tensors { try FiniteValues.check(tensor, name: name, in: optimizerPath) }
        var scalars: [String: Double] = [:]
        for (key, value) in optimizerFile.metadata where key.hasPrefix("scalar.") {
            guard let number = Double(value) else { throw ConvoyError.malformedFile(path: optimizerPath, reason: "metadata \(key) is not a number") }
            scalars[String(key.dropFirst("scalar.".count))] = number
        }
        if let kind = optimizerFile.metadata["optimizer"], kind != state.optimizer {
            throw ConvoyError.malformedFile(path: optimizerPath, reason: "written by optimizer \(kind) but trainer.json says \(state.optimizer)")
        }
        // Weights last: loading validates every tensor before touching the model.
        let contents = Contents(state: state, optimizerState: OptimizerState(tensors: optimizerFile.tensors, scalars: scalars))
        try model.loadWeights(from: directory)
        return contents
    }
}
