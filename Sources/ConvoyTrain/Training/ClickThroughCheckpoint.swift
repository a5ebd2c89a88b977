import ConvoyNN
import ConvoyParallel
import ConvoyTensor
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A CTR checkpoint: the tables as parameter-server shards (``ParameterServerCheckpoint``: every server writes
/// its own; one process writes its whole tables as server 0 of 1), the dense MLP (``Model/saveWeights(to:)``:
/// `dense.safetensors`), the workers' row-optimizer state of the dense parameters they update
/// (`dense-optimizer.safetensors`) and `trainer.json` (model
/// kind, step, seed, configuration). Assembled in a temporary sibling directory, fsynced and renamed into
/// place; safetensors and JSON only.
public enum ClickThroughCheckpoint {
    public static let denseOptimizerFileName = "dense-optimizer.safetensors"

    /// What `trainer.json` of a CTR checkpoint holds.
    public struct State: Codable, Sendable {
        public var model: String
        public var step: Int
        public var seed: UInt64
        public var servers: Int
        public var configuration: String
    }

    /// Writes the checkpoint of worker 0's `trainer` (the servers write their shards when `client` asks them).
    static func save(trainer: ClickThroughTrainer, client: ParameterServerClient?, to directory: String) throws {
        let configuration = trainer.configuration
        let target = URL(fileURLWithPath: directory).standardizedFileURL
        let parent = target.deletingLastPathComponent().path
        try FileManager.default.createDirectory(atPath: parent, withIntermediateDirectories: true)
        let temporary = parent + "/.\(target.lastPathComponent).tmp-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: temporary, withIntermediateDirectories: false)
        var published = false
        defer { if !published { try? FileManager.default.removeItem(atPath: temporary) } }
        if let client {
            try client.save(into: temporary, step: configuration.steps)
        } else {
            try ParameterServerCheckpoint.writeShard(tables: trainer.tables, dense: nil, server: 0, of: 1, into: temporary, step: configuration.steps)
        }
        try trainer.model.saveWeights(to: temporary)
        try SafeTensors(tensors: trainer.denseOptimizerStates, metadata: ["model": "ctr"]).write(to: temporary + "/" + denseOptimizerFileName)
        let state = State(model: "ctr", step: configuration.steps, seed: configuration.seed, servers: try configuration.serverCount,
                          configuration: TrainingSettings.tomlText(configuration))
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        try AtomicFile.write(try encoder.encode(state), to: temporary + "/" + TrainingCheckpoint.trainerFileName)
        try AtomicFile.syncDirectory(temporary)
        // Only a Convoy checkpoint (or nothing) is ever replaced.
        try RunDirectory.checkReplaceable(checkpoint: target.path)
        if FileManager.default.fileExists(atPath: target.path) { try FileManager.default.removeItem(atPath: target.path) }
        guard rename(temporary, target.path) == 0 else {
            throw ConvoyError.io("could not move the new checkpoint into \(target.path): \(String(cString: strerror(errno)))")
        }
        published = true
        try AtomicFile.syncDirectory(parent)
    }

    /// The state of the checkpoint in `directory`, checked against the run that resumes from it.
    static func state(in directory: String, resumedBy configuration: TrainingConfiguration) throws -> State {
        let path = directory + "/" + TrainingCheckpoint.trainerFileName
        guard let data = FileManager.default.contents(atPath: path) else { throw ConvoyError.io("--resume \(directory) is not a checkpoint: cannot read \(path)") }
        guard let state = try? JSONDecoder().decode(State.self, from: data), state.model == "ctr" else {
            throw ConvoyError.incompatible("\(path) does not describe a CTR checkpoint")
        }
        var saved = TrainingConfiguration()
        try TrainingSettings.apply(toml: state.configuration, source: path, to: &saved)
        guard state.seed == configuration.seed else {
            throw ConvoyError.incompatible("checkpoint \(directory) was trained with seed \(state.seed), the run uses --seed \(configuration.seed); resume with the same seed")
        }
        guard saved.comm == configuration.comm, saved.optimizer == configuration.optimizer, saved.ctrConfiguration == configuration.ctrConfiguration,
              saved.batch == configuration.batch else {
            throw ConvoyError.incompatible("checkpoint \(directory) was written with --comm \(saved.comm), --optimizer \(saved.optimizer), --batch \(saved.batch) and its model shape; resume with the same (the number of servers and workers may change)")
        }
        guard state.step <= configuration.steps else {
            throw ConvoyError.incompatible("checkpoint \(directory) is at step \(state.step), beyond --steps \(configuration.steps)")
        }
        return state
    }

    /// Loads the workers' dense optimizer state of the checkpoint in `directory`.
    static func loadDenseOptimizer(from directory: String, into optimizer: DenseRowOptimizer) throws {
        let path = directory + "/" + denseOptimizerFileName
        try optimizer.load(try SafeTensors.read(contentsOf: path).tensors, source: path)
    }

    /// Reads a CTR checkpoint for evaluation: its configuration, the dense model and every table whole (from
    /// shards written by any number of servers).
    public static func load(from directory: String) throws -> (configuration: TrainingConfiguration, model: CTRModel, tables: [SparseTable]) {
        let statePath = directory + "/" + TrainingCheckpoint.trainerFileName
        guard let data = FileManager.default.contents(atPath: statePath) else {
            throw ConvoyError.io("\(directory) is not a checkpoint: cannot read \(statePath)")
        }
        guard let state = try? JSONDecoder().decode(State.self, from: data), state.model == "ctr" else {
            throw ConvoyError.incompatible("\(statePath) does not describe a CTR checkpoint; evaluate GPT checkpoints without --model ctr")
        }
        var configuration = TrainingConfiguration()
        try TrainingSettings.apply(toml: state.configuration, source: statePath, to: &configuration)
        let model = try CTRModel(configuration.ctrConfiguration, seed: configuration.seed)
        try model.loadWeights(from: directory)
        let rule = try configuration.rowOptimizer()
        let tables = configuration.ctrVocabularySizes.enumerated().map { table, rows in
            SparseTable(table: table, rows: rows, width: configuration.ctrEmbeddingWidth, optimizer: rule, initializer: RowInitializer(seed: configuration.seed))
        }
        try ParameterServerCheckpoint.load(from: directory, into: tables, dense: nil, denseRange: 0..<0, denseCount: 0)
        return (configuration, model, tables)
    }
}
