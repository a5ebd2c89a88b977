import ConvoyComm
import ConvoyNN
import ConvoyTensor

/// The step schedule without pipelines: forward and backward of each micro-batch in turn, gradients
/// accumulating, the reduction overlapping the last micro-batch's backward.
public final class AccumulationSchedule: StepSchedule {
    public let model: any LanguageModel
    public let microBatches: Int
    private let timeline: Timeline?
    private let worldRank: Int

    public init(model: any LanguageModel, microBatches: Int, timeline: Timeline? = nil, worldRank: Int = 0) {
        self.model = model
        self.microBatches = microBatches
        self.timeline = timeline
        self.worldRank = worldRank
    }

    public var module: Module { model }
    public var summary: String { microBatches > 1 ? "\(microBatches) accumulated micro-batches" : "one micro-batch" }

    public func run(load: (Int) throws -> MicroBatch, synchronizer: any GradientSynchronizer,
                    reduceGradients: () throws -> Void, optimizerStep: () throws -> Void) throws -> (weightedLoss: Double, peakStashed: Int) {
        var loss = 0.0
        for index in 0..<microBatches {
            let data = try load(index)
            // Only the last micro-batch's backward communicates; the earlier ones accumulate locally.
            try synchronizer.backward(synchronizing: index == microBatches - 1) {
                let microLoss = measure("forward") {
                    model.loss(data.tokens, targets: data.targets, batch: data.batch, time: data.time, context: data.context)
                }
                try measure("backward") { try (microLoss * data.lossScale).backward() }
                loss += Double(microLoss.scalarValue) * data.lossWeight
            }
            try synchronizer.finishBackward()
        }
        try reduceGradients()
        try measure("optimizer step") { try optimizerStep() }
        return (loss, 1)
    }

    public func gatherFullModel() throws {}
    public func releaseFullModel() {}

    private func measure<Result>(_ name: String, _ body: () throws -> Result) rethrows -> Result {
        guard let timeline else { return try body() }
        return try timeline.measure(name, category: name, rank: worldRank, body)
    }
}
