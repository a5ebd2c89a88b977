import ConvoyNN
import ConvoyTensor

/// The part of a model one pipeline rank runs: the chunks (virtual stages) of a ``PipelinePartition`` that live
/// on the rank, as a ``ConvoyNN/Module`` whose parameters are exactly the ones the rank owns.
///
/// Virtual stage 0 owns the embeddings (`wte`, `wpe`); the last virtual stage owns the final norm and the head,
/// whose weight is the token embedding (tied): when those are different ranks, each holds a copy of `wte`, and
/// ``PipelineParallel`` keeps the copies equal by summing their gradients. Every rank builds the whole model from
/// the same seed (so shared initial values agree) and then gives back the memory of the parameters it does not
/// own (``ConvoyTensor/TensorStorage/releaseMemory()``): touching one traps instead of computing with stale
/// values. ``restoreUnownedParameters()`` brings that memory back, e.g. to collect the whole model on one rank.
public final class PipelineStageModule: Module {
    /// The whole model (only this rank's parameters are live).
    public let model: any LanguageModel
    public let partition: PipelinePartition
    /// This rank's position in the pipeline.
    public let pipelineRank: Int
    /// The virtual stages this rank runs, in model order.
    public let virtualStages: [Int]
    /// The parameters this rank owns, with their names in the whole model, in registration order.
    public let ownedParameters: [(name: String, parameter: Parameter)]
    private let unowned: [Parameter]

    /// Cuts `model` by `partition` and keeps the chunks of pipeline rank `pipelineRank`.
    public init(model: any LanguageModel, partition: PipelinePartition, pipelineRank: Int) throws {
        guard partition.layerRanges.last?.upperBound == model.layers.count else {
            throw ConvoyError.invalidConfiguration("the pipeline partition covers \(partition.layerRanges.last?.upperBound ?? 0) layers but the model has \(model.layers.count)")
        }
        guard (0..<partition.stages).contains(pipelineRank) else {
            throw ConvoyError.invalidConfiguration("pipeline rank \(pipelineRank) is outside pp = \(partition.stages)")
        }
        self.model = model
        self.partition = partition
        self.pipelineRank = pipelineRank
        virtualStages = partition.virtualStages(onRank: pipelineRank)
        let owned = Self.owned(partition: partition, model: model, pipelineRank: pipelineRank)
        let all = model.namedParameters()
        ownedParameters = all.filter { owned.contains(ObjectIdentifier($0.parameter)) }
        unowned = all.map(\.parameter).filter { !owned.contains(ObjectIdentifier($0)) }
        super.init()
        for parameter in unowned { parameter.storage.releaseMemory() }
    }

    public override var localParameters: [(name: String, parameter: Parameter)] { ownedParameters }

    /// Whether this rank runs virtual stage 0 (it needs the micro-batch's tokens).
    public var holdsInput: Bool { virtualStages.first == 0 }
    /// Whether this rank runs the last virtual stage (it needs the targets and computes the loss).
    public var holdsLoss: Bool { virtualStages.last == partition.virtualStageCount - 1 }
    /// The token embedding when this rank holds one of two tied copies (first and last stage on different
    /// ranks), else nil.
    public var tiedEmbedding: Parameter? {
        partition.virtualStageCount > 1 && holdsInput != holdsLoss ? model.tiedWeight : nil
    }

    /// Runs virtual stage `stage` forward: from `tokens` (virtual stage 0) or `input` [batch, time, width], through
    /// its layers, and for the last virtual stage the final norm, head and mean cross-entropy against `targets`.
    /// Returns the activation [batch, time, width], or the loss (a scalar) on the last virtual stage.
    public func forward(virtualStage stage: Int, input: Tensor?, tokens: [Int32], targets: [Int32], batch: Int, time: Int, context: ForwardContext) -> Tensor {
        precondition(virtualStages.contains(stage), "virtual stage \(stage) does not run on pipeline rank \(pipelineRank)")
        var x = stage == 0 ? model.embed(tokens, batch: batch, time: time, context: context) : input!
        for layer in partition.layerRanges[stage] { x = model.layer(layer, x, context: context) }
        guard stage == partition.virtualStageCount - 1 else { return x }
        return Tensor.crossEntropy(logits: model.head(x), targets: targets)
    }

    /// Gives every parameter of the model memory again (contents undefined for the unowned ones until written).
    public func restoreUnownedParameters() {
        for parameter in unowned { parameter.storage.restoreMemory() }
    }

    /// Releases the unowned parameters' memory again.
    public func releaseUnownedParameters() {
        for parameter in unowned { parameter.storage.releaseMemory() }
    }

    /// The parameters pipeline rank `pipelineRank` owns under `partition`: the embeddings with virtual stage 0,
    /// each virtual stage's blocks, the final norm and (tied) token embedding with the last virtual stage.
    private static func owned(partition: PipelinePartition, model: any LanguageModel, pipelineRank: Int) -> Set<ObjectIdentifier> {
        let last = partition.virtualStageCount - 1
        var owned = Set<ObjectIdentifier>()
        func own(_ module: Module) { for parameter in module.parameters { owned.insert(ObjectIdentifier(parameter)) } }
        for stage in partition.virtualStages(onRank: pipelineRank) {
            if stage == 0 { model.inputModules.forEach(own) }
            for layer in partition.layerRanges[stage] { own(model.layers[layer]) }
            if stage == last { model.outputModules.forEach(own) }
        }
        return owned
    }

    /// The names of the parameters pipeline rank `pipelineRank` owns under `partition`, in registration order.
    public static func ownedNames(partition: PipelinePartition, model: any LanguageModel, pipelineRank: Int) -> [String] {
        let owned = owned(partition: partition, model: model, pipelineRank: pipelineRank)
        return model.namedParameters().filter { owned.contains(ObjectIdentifier($0.parameter)) }.map(\.name)
    }
}
