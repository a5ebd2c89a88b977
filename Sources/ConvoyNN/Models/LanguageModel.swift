import ConvoyTensor

/// The shape facts parallel plans need of a model before it is built: how many repeated layers, how wide,
/// how many heads, how long a context, how large a vocabulary.
public struct ModelShape: Sendable, Equatable {
    public var layers: Int
    public var width: Int
    public var heads: Int
    public var contextLength: Int
    public var vocabularySize: Int
    /// The name of the repeated layer sequence among the model's modules (`"h"` for GPT: `h.0`, `h.1`, …).
    public var layerSequenceName: String
    /// Top-level modules before the layers (with the first layer in a pipeline), in order.
    public var inputModuleNames: [String]
    /// Top-level modules after the layers (with the last layer), in order.
    public var outputModuleNames: [String]

    public init(layers: Int, width: Int, heads: Int, contextLength: Int, vocabularySize: Int, layerSequenceName: String,
                inputModuleNames: [String], outputModuleNames: [String]) {
        self.layers = layers
        self.width = width
        self.heads = heads
        self.contextLength = contextLength
        self.vocabularySize = vocabularySize
        self.layerSequenceName = layerSequenceName
        self.inputModuleNames = inputModuleNames
        self.outputModuleNames = outputModuleNames
    }

    /// The module name of layer `index` (`h.3`).
    public func layerName(_ index: Int) -> String { "\(layerSequenceName).\(index)" }
}

/// A model Convoy can train under any parallel plan: the loss on a batch, named parameters (with their
/// placements), the repeated layer sequence that pipelines cut into stages and ZeRO-3 gathers layer by layer,
/// the pieces a pipeline stage runs, and export of its weights. Nothing below the CLI names a concrete model.
public protocol LanguageModel: Model {
    /// The model's shape.
    var shape: ModelShape { get }
    /// The repeated layers, in model order (their parameters are named `<layerSequenceName>.<index>.…`).
    var layers: [Module] { get }
    /// The modules before the layers (embeddings), which a pipeline puts on its first stage.
    var inputModules: [Module] { get }
    /// The modules after the layers (final norm, head), which a pipeline puts on its last stage.
    var outputModules: [Module] { get }
    /// A weight both the input and the output modules use (GPT's tied token embedding), or nil.
    var tiedWeight: Parameter? { get }
    /// The model's tensor-parallel plan: how each parameter (by name) is cut across tp ranks; parameters not
    /// listed are replicated. The operators deduce everything else from these placements.
    var tensorParallelShardings: [String: TensorParallelSharding] { get }

    /// The input modules' forward: tokens [batch·time] → hidden [batch, time, width].
    func embed(_ tokens: [Int32], batch: Int, time: Int, context: ForwardContext) -> Tensor
    /// Layer `index`'s forward.
    func layer(_ index: Int, _ hidden: Tensor, context: ForwardContext) -> Tensor
    /// The output modules' forward: hidden → logits [batch, time, vocabulary].
    func head(_ hidden: Tensor) -> Tensor

    /// Writes the weights (and what describes the model) into `directory`.
    func saveWeights(to directory: String) throws
    /// Writes what ``saveWeights(to:)`` writes, taking each parameter's whole shape (by name) from `shape` and
    /// its values from `tensor` one at a time, so no more than one parameter need be in memory (an export from
    /// a sharded checkpoint, whose parameters this rank may hold only pieces of).
    func exportWeights(to directory: String, shape: (String) throws -> [Int], tensor: (String) throws -> Tensor) throws
    /// Loads weights written by ``saveWeights(to:)``; refuses another shape, and modifies nothing on error.
    func loadWeights(from directory: String) throws
    /// Throws, naming both shapes, unless the weights in `directory` are of this model's shape.
    func checkWeightsCompatible(in directory: String) throws
}

extension LanguageModel {
    /// No tensor-parallel plan: every parameter replicated.
    public var tensorParallelShardings: [String: TensorParallelSharding] { [:] }

    /// Logits for tokens [batch·time] laid out row-major as [batch, time].
    public func logits(_ tokens: [Int32], batch: Int, time: Int, context: ForwardContext = .evaluation) -> Tensor {
        var hidden = embed(tokens, batch: batch, time: time, context: context)
        for index in layers.indices { hidden = layer(index, hidden, context: context) }
        return head(hidden)
    }

    /// Mean cross-entropy of predicting `targets` (same layout as `tokens`; −1 entries are ignored).
    public func loss(_ tokens: [Int32], targets: [Int32], batch: Int, time: Int, context: ForwardContext = .evaluation) -> Tensor {
        Tensor.crossEntropy(logits: logits(tokens, batch: batch, time: time, context: context), targets: targets)
    }
}
