import Foundation

/// Where a run stands, saved in every checkpoint (`trainer.json`) so training resumes exactly.
///
/// Randomness is counter-based: the data of step s and its dropout masks are functions of (seed, s), so
/// the step number is the random state and the data position together; both are recorded explicitly.
public struct TrainerState: Codable, Sendable, Equatable {
    /// Format of this file.
    public var formatVersion = 1
    /// Optimizer steps completed.
    public var step: Int
    /// The run's seed (data order, dropout, initialisation).
    public var seed: UInt64
    /// Global index of the next training example.
    public var dataPosition: Int
    /// Counter of the random stream at the next step (equals `step`: one counter block per step).
    public var randomCounter: Int
    /// The effective configuration the checkpoint was trained with (TOML text).
    public var configuration: String
    /// The optimizer's kind, so a checkpoint is not resumed with another.
    public var optimizer: String
    /// The loss scale to continue with (absent when the run did not scale its loss).
    public var lossScale: Float?
    /// Consecutive finite steps since the loss scale last changed (with ``lossScale``).
    public var lossScaleGoodSteps: Int?

    /// The optimizer kind of a checkpoint that holds weights only (imported): a run of any optimizer, seed and
    /// dataset may start from it.
    public static let weightsOnly = "none"

    public init(step: Int, seed: UInt64, dataPosition: Int, configuration: String, optimizer: String) {
        self.step = step
        self.seed = seed
        self.dataPosition = dataPosition
        self.randomCounter = step
        self.configuration = configuration
        self.optimizer = optimizer
    }
}
