import ConvoyNN

/// One micro-batch of this rank's slice of the global batch, as a ``StepSchedule`` consumes it.
public struct MicroBatch {
    public var tokens: [Int32]
    public var targets: [Int32]
    public var batch: Int
    public var time: Int
    /// The loss of the micro-batch is multiplied by this before backward (its share of the global batch, times
    /// the data-parallel size whose reduction averages).
    public var lossScale: Float
    /// Its share of the global batch's loss, for reporting.
    public var lossWeight: Double
    public var context: ForwardContext

    public init(tokens: [Int32], targets: [Int32], batch: Int, time: Int, lossScale: Float, lossWeight: Double, context: ForwardContext) {
        self.tokens = tokens
        self.targets = targets
        self.batch = batch
        self.time = time
        self.lossScale = lossScale
        self.lossWeight = lossWeight
        self.context = context
    }
}
