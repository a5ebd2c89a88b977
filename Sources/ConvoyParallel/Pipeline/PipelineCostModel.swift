import ConvoyTensor

/// How long each pipeline instruction takes, in arbitrary time units, for ``PipelineSimulator``.
///
/// Forward and backward costs may differ per virtual stage (embeddings on the first, the head and loss on the
/// last); a one-element array applies to every virtual stage.
public struct PipelineCostModel: Sendable, Equatable {
    /// Forward cost of each virtual stage, or one value for all.
    public var forwardCosts: [Double]
    /// Backward cost of each virtual stage, or one value for all.
    public var backwardCosts: [Double]
    /// Time a send occupies the sending rank (posting the message).
    public var sendCost: Double
    /// Time a receive occupies the receiving rank once its message has arrived.
    public var receiveCost: Double
    /// Time from the end of a send until its message can be received.
    public var messageLatency: Double
    /// Time to fetch a micro-batch.
    public var loadCost: Double
    /// Time of the gradient reduction at the end of the step.
    public var reduceGradientsCost: Double
    /// Time of the optimizer step.
    public var optimizerStepCost: Double

    /// A cost model; every cost must be finite and ≥ 0 (checked when simulating).
    public init(forwardCosts: [Double], backwardCosts: [Double], sendCost: Double = 0, receiveCost: Double = 0,
                messageLatency: Double = 0, loadCost: Double = 0, reduceGradientsCost: Double = 0,
                optimizerStepCost: Double = 0) {
        self.forwardCosts = forwardCosts
        self.backwardCosts = backwardCosts
        self.sendCost = sendCost
        self.receiveCost = receiveCost
        self.messageLatency = messageLatency
        self.loadCost = loadCost
        self.reduceGradientsCost = reduceGradientsCost
        self.optimizerStepCost = optimizerStepCost
    }

    /// The same forward and backward cost on every virtual stage, free communication (backward ≈ 2× forward
    /// for a transformer block).
    public static func uniform(forward: Double = 1, backward: Double = 2) -> PipelineCostModel {
        PipelineCostModel(forwardCosts: [forward], backwardCosts: [backward])
    }

    /// The forward cost of virtual stage `stage`.
    public func forwardCost(virtualStage stage: Int) -> Double { forwardCosts.count == 1 ? forwardCosts[0] : forwardCosts[stage] }

    /// The backward cost of virtual stage `stage`.
    public func backwardCost(virtualStage stage: Int) -> Double { backwardCosts.count == 1 ? backwardCosts[0] : backwardCosts[stage] }

    /// Refuses per-stage arrays of the wrong length and negative or non-finite costs.
    func validate(virtualStageCount: Int) throws {
        for (name, costs) in [("forward", forwardCosts), ("backward", backwardCosts)] {
            guard costs.count == 1 || costs.count == virtualStageCount else {
                throw ConvoyError.invalidConfiguration(
                    "the cost model has \(costs.count) \(name) costs for \(virtualStageCount) virtual stages; give one per virtual stage or a single value")
            }
        }
        let all = forwardCosts + backwardCosts + [sendCost, receiveCost, messageLatency, loadCost, reduceGradientsCost, optimizerStepCost]
        guard all.allSatisfy({ $0.isFinite && $0 >= 0 }) else {
            throw ConvoyError.invalidConfiguration("pipeline costs must be finite and ≥ 0; got \(all.filter { !($0.isFinite && $0 >= 0) })")
        }
    }
}
