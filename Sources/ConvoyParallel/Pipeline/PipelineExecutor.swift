import ConvoyComm
import ConvoyNN
import ConvoyTensor

/// Runs one pipeline rank's instruction list (``PipelineSchedule``) for one training step.
///
/// Receives block (with the group's timeout); sends are posted asynchronously and their buffers kept alive
/// until they complete, so no schedule needs a send to finish before its rank goes on. Each (micro-batch,
/// virtual stage) forward stashes its input and output until its backward, which frees them; the peak number
/// of stashed forwards is recorded. Messages between two ranks are matched by tag in FIFO order, which the
/// schedules guarantee follows micro-batch order (``PipelineInstruction/messageTag(gradient:virtualStage:)``).
public final class PipelineExecutor {
    /// What the data source hands the executor for one micro-batch (the same for every step schedule).
    public typealias MicroBatch = ConvoyParallel.MicroBatch

    /// What one step did on this rank.
    public struct StepReport {
        /// Σ over the micro-batches whose loss this rank computed of loss × weight (0 on ranks without the loss).
        public var weightedLoss: Double
        /// The most (micro-batch, virtual stage) forwards stashed at once.
        public var peakStashed: Int
    }

    private struct Stash {
        var input: Tensor?
        var output: Tensor
    }

    private struct Key: Hashable {
        let microBatch: Int
        let virtualStage: Int
    }

    public let stage: PipelineStageModule
    /// The pipeline group: group rank i is pipeline rank i.
    public let group: any ProcessGroup
    private let timeline: Timeline?
    private let worldRank: Int

    public init(stage: PipelineStageModule, group: any ProcessGroup, timeline: Timeline? = nil, worldRank: Int? = nil) {
        self.stage = stage
        self.group = group
        self.timeline = timeline
        self.worldRank = worldRank ?? group.worldRanks[group.rank]
    }

    /// Walks `instructions`. `load` supplies micro-batch `i`; `reduceGradients` and `optimizerStep` run where the
    /// list says (the caller decides what they do).
    public func run(_ instructions: [PipelineInstruction], width: Int, load: (Int) throws -> MicroBatch,
                    reduceGradients: () throws -> Void, optimizerStep: () throws -> Void) throws -> StepReport {
        var microBatches: [Int: MicroBatch] = [:]
        var stash: [Key: Stash] = [:]
        var received: [Key: Tensor] = [:]
        var receivedGradients: [Key: Tensor] = [:]
        var inputGradients: [Key: Tensor] = [:]
        var sends: [(Work, Tensor)] = []
        var report = StepReport(weightedLoss: 0, peakStashed: 0)
        let lastStage = stage.partition.virtualStageCount - 1

        func microBatch(_ index: Int) throws -> MicroBatch {
            if let loaded = microBatches[index] { return loaded }
            let loaded = try load(index)
            microBatches[index] = loaded
            return loaded
        }
        func activationShape(_ index: Int) throws -> [Int] {
            let data = try microBatch(index)
            return [data.batch, data.time, width]
        }
        func post(_ tensor: Tensor, to peer: Int, tag: Int, name: String) {
            let contiguous = tensor.contiguous()
            // The span covers posting only: the send completes in the background.
            let work = measure(name, category: "send") { group.sendAsync(CommunicationBuffer(contiguous), to: peer, tag: tag) }
            sends.append((work, contiguous))
            // Completed sends are dropped as we go, so their buffers do not pile up over a long schedule.
            if sends.count > 8 { sends.removeAll { $0.0.isCompleted } }
        }
        func receive(_ shape: [Int], from peer: Int, tag: Int, name: String) throws -> Tensor {
            let tensor = Tensor(uninitializedShape: shape)
            try measure(name, category: "receive") { try group.receive(CommunicationBuffer(tensor), from: peer, tag: tag) }
            return tensor
        }

        for instruction in instructions {
            switch instruction {
            case .loadMicroBatch(let index):
                _ = try microBatch(index)
            case .receiveActivation(let index, let virtualStage, let peer):
                let tensor = try receive(try activationShape(index), from: peer, tag: instruction.messageTag!, name: "receive activation mb \(index) s \(virtualStage)")
                tensor.requiresGrad = true
                received[Key(microBatch: index, virtualStage: virtualStage)] = tensor
            case .forward(let index, let virtualStage):
                let key = Key(microBatch: index, virtualStage: virtualStage)
                let data = try microBatch(index)
                let input = received.removeValue(forKey: key)
                let output = measure("forward mb \(index) s \(virtualStage)", category: "forward") {
                    stage.forward(virtualStage: virtualStage, input: input, tokens: data.tokens, targets: data.targets,
                                  batch: data.batch, time: data.time, context: data.context)
                }
                if virtualStage == lastStage { report.weightedLoss += Double(output.scalarValue) * data.lossWeight }
                stash[key] = Stash(input: input, output: output)
                report.peakStashed = max(report.peakStashed, stash.count)
            case .sendActivation(let index, let virtualStage, let peer):
                let output = stash[Key(microBatch: index, virtualStage: virtualStage)]!.output
                post(output.detached(), to: peer, tag: instruction.messageTag!, name: "send activation mb \(index) s \(virtualStage)")
            case .receiveGradient(let index, let virtualStage, let peer):
                receivedGradients[Key(microBatch: index, virtualStage: virtualStage)] =
                    try receive(try activationShape(index), from: peer, tag: instruction.messageTag!, name: "receive gradient mb \(index) s \(virtualStage)")
            case .backward(let index, let virtualStage):
                let key = Key(microBatch: index, virtualStage: virtualStage)
                guard let entry = stash.removeValue(forKey: key) else {
                    throw ConvoyError.invalidConfiguration("pipeline instruction list runs backward(mb \(index), stage \(virtualStage)) before its forward")
                }
                let data = try microBatch(index)
                try measure("backward mb \(index) s \(virtualStage)", category: "backward") {
                    if virtualStage == lastStage {
                        try (entry.output * data.lossScale).backward()
                    } else {
                        guard let gradient = receivedGradients.removeValue(forKey: key) else {
                            throw ConvoyError.invalidConfiguration("pipeline instruction list runs backward(mb \(index), stage \(virtualStage)) before receiving its gradient")
                        }
                        try entry.output.backward(outputGradient: gradient)
                    }
                }
                if let input = entry.input {
                    inputGradients[key] = input.grad ?? Tensor.zeros(input.shape)
                }
            case .sendGradient(let index, let virtualStage, let peer):
                guard let gradient = inputGradients.removeValue(forKey: Key(microBatch: index, virtualStage: virtualStage)) else {
                    throw ConvoyError.invalidConfiguration("pipeline instruction list sends the gradient of mb \(index), stage \(virtualStage) before its backward")
                }
                post(gradient, to: peer, tag: instruction.messageTag!, name: "send gradient mb \(index) s \(virtualStage)")
            case .reduceGradients:
                for (work, _) in sends { try work.wait() }
                sends.removeAll()
                try measure("reduce gradients", category: "reduce") { try reduceGradients() }
            case .optimizerStep:
                try measure("optimizer step", category: "optimizer step") { try optimizerStep() }
            }
        }
        for (work, _) in sends { try work.wait() }
        return report
    }

    private func measure<Result>(_ name: String, category: String, _ body: () throws -> Result) rethrows -> Result {
        guard let timeline else { return try body() }
        return try timeline.measure(name, category: category, rank: worldRank, body)
    }
}
