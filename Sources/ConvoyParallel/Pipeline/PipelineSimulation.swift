/// The timeline ``PipelineSimulator`` computes for one training step of a pipeline schedule.
public struct PipelineSimulation: Sendable {
    /// One instruction on one rank's timeline.
    public struct Span: Sendable, Hashable {
        /// The instruction.
        public let instruction: PipelineInstruction
        /// When it started (for a receive: when its message had arrived and the rank was free).
        public let start: Double
        /// When it ended.
        public let end: Double
    }

    /// Each rank's instructions with their times, in program order, indexed by rank.
    public let spans: [[Span]]
    /// When the last rank finished its program, end-of-step reduction and optimizer step included.
    public let makespan: Double
    /// When the last backward on any rank ended: the pipeline's compute span `T`, which the bubble is measured
    /// against (the end-of-step reduction and optimizer step are not pipeline bubble).
    public let computeEnd: Double
    /// Each rank's time spent in forwards and backwards.
    public let busyTime: [Double]
    /// Each rank's most forwards whose backward had not run yet, at any point of the step.
    public let peakStashedMicroBatches: [Int]

    /// Share of the ranks' compute span spent idle: 1 − Σ busy / (pp · ``computeEnd``); 0 when nothing ran.
    public var bubbleFraction: Double {
        computeEnd > 0 ? 1 - busyTime.reduce(0, +) / (Double(busyTime.count) * computeEnd) : 0
    }
}
