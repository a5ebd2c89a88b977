import ConvoyTensor

/// One sequence of a batch: `contextLength` input tokens and the token each position should predict.
/// Targets equal to ``ConvoyTensor/Tensor/ignoredTarget`` (-1) contribute nothing to the loss (padding,
/// or the prompt part of a supervised example).
public struct TrainingExample: Sendable, Equatable {
    public var inputs: [Int32]
    public var targets: [Int32]

    public init(inputs: [Int32], targets: [Int32]) {
        precondition(inputs.count == targets.count, "an example needs one target per input")
        self.inputs = inputs
        self.targets = targets
    }

    /// Positions that count in the loss.
    public var countedTargets: Int { targets.reduce(0) { $0 + ($1 == Tensor.ignoredTarget ? 0 : 1) } }
}

/// A source of training and validation sequences with random access by global index.
///
/// Example `i` is a pure function of (the dataset's seed, `i`): the trainer asks for examples
/// `step · globalBatch ..< (step + 1) · globalBatch` at each step, so any rank can compute any slice of any
/// step's global batch, and resuming needs only the step number.
public protocol TrainingDataset: Sendable {
    /// Tokens per example.
    var contextLength: Int { get }
    /// The training example with global index `index` (index ≥ 0; there is no end — datasets cycle or
    /// sample).
    func trainingExample(_ index: Int) -> TrainingExample
    /// Number of validation examples.
    var validationCount: Int { get }
    /// Validation example `index` in 0 ..< validationCount.
    func validationExample(_ index: Int) -> TrainingExample
    /// A one-line description for logs ("arithmetic (3-digit operands)", "file.txt: 1.2 MB").
    var summary: String { get }
}
