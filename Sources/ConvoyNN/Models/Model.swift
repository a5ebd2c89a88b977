import ConvoyTensor

/// A model Convoy trains: its parameters with stable names (``Module``) and the export and import of its
/// weights. GPT (through ``LanguageModel``) and the click-through-rate model (``CTRModel``) implement it;
/// checkpoints write and read weights only through it.
public protocol Model: Module {
    /// The model's kind, as `--model` names it ("gpt", "ctr").
    var kind: String { get }
    /// Writes the weights (and what describes the model) into `directory`.
    func saveWeights(to directory: String) throws
    /// Loads weights written by ``saveWeights(to:)``; refuses another shape, and modifies nothing on error.
    func loadWeights(from directory: String) throws
    /// Throws, naming both shapes, unless the weights in `directory` are of this model's shape.
    func checkWeightsCompatible(in directory: String) throws
}
