import ArgumentParser
import ConvoyNN

/// The GPT shape flags the benchmarks share (default: the benchmark GPT-mini, 10.8 M parameters).
struct ModelShapeOptions: ParsableArguments {
    @Option(help: "Transformer blocks.") var layers: Int = 6
    @Option(name: .customLong("d-model"), help: "Model width.") var dModel: Int = 384
    @Option(help: "Attention heads.") var heads: Int = 6
    @Option(help: "Context length (tokens per sequence).") var context: Int = 256

    func validate() throws {
        for (name, value) in [("--layers", layers), ("--d-model", dModel), ("--heads", heads), ("--context", context)] where value <= 0 {
            throw ValidationError("\(name) must be positive, got \(value)")
        }
        guard dModel % heads == 0 else { throw ValidationError("--d-model \(dModel) must be a multiple of --heads \(heads)") }
    }

    /// The model these flags describe (byte vocabulary, no dropout).
    var configuration: GPTConfiguration {
        GPTConfiguration(contextLength: context, layers: layers, heads: heads, width: dModel)
    }

    /// "GPT 6L d384 h6 T256".
    var summary: String { "GPT \(layers)L d\(dModel) h\(heads) T\(context)" }
}
