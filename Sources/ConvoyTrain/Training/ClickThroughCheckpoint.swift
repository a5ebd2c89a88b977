import ConvoyNN
import ConvoyParallel
import ConvoyTensor
import Foundation

/// A CTR checkpoint is a sharded checkpoint (``ConvoyParallel/CheckpointIndex``) like GPT's: every parameter
/// server writes its rank file (its table shards as row-strided pieces and its chunk of the dense
/// parameters, ``ConvoyParallel/ParameterServerCheckpoint``), the first worker writes what the workers hold
/// (the all-reduced dense parameters with their row-wise optimizer state; the whole tables when there are no
/// servers), and `trainer.json` is a ``TrainerState`` whose configuration says `model.kind = "ctr"`.
///
/// It is assembled in a temporary sibling directory, fsynced and renamed into place by
/// ``TrainingCheckpoint/publish(temporary:ranks:writers:state:layout:model:exportWeights:extraFiles:to:failingAt:)``
/// — the same replacement rules as GPT's — and `convoy checkpoint info/verify` read it. Any number of servers
/// (or one process) loads it: each takes the rows it holds from every piece.
public enum ClickThroughCheckpoint {
    /// Saves the checkpoint of `trainer` (the first worker) after `step` steps to `directory`: the servers, asked
    /// through `client`, write their rank files once every worker has pushed `step` steps; then this worker
    /// writes its own and publishes the checkpoint.
    static func save(trainer: ClickThroughTrainer, client: ParameterServerClient?, step: Int, to directory: String) throws {
        let configuration = trainer.configuration
        let rank = trainer.world?.rank ?? 0, ranks = trainer.world?.size ?? 1
        let temporary = try TrainingCheckpoint.prepareTemporaryDirectory(
            for: directory, tag: CheckpointTemporary.tag(unique: "ctr-step\(step)-\(UInt32.random(in: 0...UInt32.max))"))
        do {
            try client?.save(into: temporary, step: step)
            try CheckpointShardWriter.write(trainer.checkpointSources(), optimizerScalars: [:], rank: rank, of: ranks, into: temporary)
        } catch {
            try? FileManager.default.removeItem(atPath: temporary)
            throw error
        }
        let state = TrainerState(step: step, seed: configuration.seed, dataPosition: step * configuration.batch,
                                 configuration: TrainingSettings.tomlText(configuration), optimizer: configuration.optimizer)
        try TrainingCheckpoint.publish(temporary: temporary, ranks: ranks, writers: ((trainer.roles?.serverRanks ?? []) + [rank]).sorted(), state: state,
                                       layout: trainer.layoutSummary, model: nil, exportWeights: false, to: directory)
    }

    /// The checkpoint `requested` resolves to (or its aside copy) and its step, checked against the run that
    /// resumes from it: a CTR checkpoint of the same seed, model shape, optimizer, `--comm` and global batch
    /// (the numbers of servers and workers may differ).
    static func resumePoint(_ requested: String, resumedBy configuration: TrainingConfiguration) throws -> (directory: String, step: Int) {
        let (directory, state, saved) = try read(requested)
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
        return (directory, state.step)
    }

    /// Reads a CTR checkpoint for evaluation: its configuration, the dense model and every table whole.
    public static func load(from requested: String) throws -> (configuration: TrainingConfiguration, model: CTRModel, tables: [SparseTable]) {
        let (directory, _, configuration) = try read(requested)
        let model = try CTRModel(configuration.ctrConfiguration, seed: configuration.seed)
        let reader = try ShardedCheckpointReader(directory: directory)
        try ParameterServerCheckpoint.load(dense: model.namedParameters(), states: [], from: reader)
        // Evaluation needs the rows only, not their optimizer state.
        let tables = configuration.ctrVocabularySizes.enumerated().map { table, rows in
            SparseTable(table: table, rows: rows, width: configuration.ctrEmbeddingWidth, optimizer: RowOptimizer(kind: .sgd), initializer: RowInitializer(seed: configuration.seed))
        }
        try ParameterServerCheckpoint.load(tables: tables, from: reader)
        return (configuration, model, tables)
    }

    /// The resolved directory, trainer state and configuration of the CTR checkpoint `requested`.
    private static func read(_ requested: String) throws -> (String, TrainerState, TrainingConfiguration) {
        let directory = try TrainingCheckpoint.resolvedDirectory(requested)
        let state = try TrainingCheckpoint.readState(from: directory)
        var configuration = TrainingConfiguration()
        try TrainingSettings.apply(toml: state.configuration, source: directory + "/" + TrainingCheckpoint.trainerFileName, to: &configuration)
        guard configuration.model == "ctr" else {
            throw ConvoyError.incompatible("\(directory) is a checkpoint of --model \(configuration.model), not of the CTR model; use a checkpoint written by convoy train --model ctr")
        }
        return (directory, state, configuration)
    }
}
