import ConvoyTensor
import Foundation

/// A Wide & Deep / DLRM-style click-through-rate model: each categorical feature's id selects a row of its
/// embedding table, the rows and the dense features are concatenated, and an MLP (two ReLU hidden layers)
/// gives one logit per example; the loss is the logistic loss (binary cross-entropy on the logit).
///
/// The tables are not parameters of this module: they may hold millions of rows and live on parameter
/// servers (or in a local ``SparseTable``); a batch's rows are pulled into small leaf tensors and gathered
/// with ``SparseLookup``, so backward yields row gradients only. The module's own parameters are the dense MLP
/// (`mlp.0.weight`, …, `mlp.2.bias`).
public final class CTRModel: Module {
    public let configuration: CTRConfiguration
    public let layers: [Linear]
    private let layerList: ModuleList<Linear>

    public init(_ configuration: CTRConfiguration, seed: UInt64) throws {
        try configuration.validate()
        self.configuration = configuration
        let initializer = Initializer(seed: seed)
        let widths = [configuration.inputWidth, configuration.hiddenWidth, configuration.hiddenWidth, 1]
        layers = (0..<3).map { index in
            // He-style scale for the ReLU layers keeps the logits O(1) at any input width.
            Linear(widths[index], widths[index + 1], std: (2 / Float(widths[index])).squareRoot(), initializer: initializer, name: "mlp.\(index)")
        }
        layerList = ModuleList(layers)
        super.init()
        assignParameterNames()
    }

    public override var children: [(name: String, module: Module)] { [("mlp", layerList)] }

    /// Logits [batch] from the dense features [batch, denseFeatures] and each table's embedded rows [batch, width].
    public func logits(dense: Tensor, embedded: [Tensor]) -> Tensor {
        precondition(embedded.count == configuration.tableCount, "the CTR model has \(configuration.tableCount) tables, got \(embedded.count) embedded features")
        let batch = dense.shape[0]
        var x = Tensor.concatenate(embedded + (configuration.denseFeatures > 0 ? [dense] : []), axis: 1)
        for (index, layer) in layers.enumerated() {
            x = layer(x)
            if index < layers.count - 1 { x = x.relu() }
        }
        return x.reshaped([batch])
    }

    /// The file ``saveWeights(to:)`` writes: every dense parameter under its name (the tables are saved by their
    /// holders, as parameter-server shards).
    public static let weightsFileName = "dense.safetensors"

    /// Mean logistic loss: softplus(z) − y·z, written as relu(z) − y·z + log(1 + e^(−|z|)) so no exponent overflows.
    public static func logisticLoss(logits: Tensor, labels: [Float]) -> Tensor {
        precondition(logits.rank == 1 && logits.shape[0] == labels.count, "logistic loss: \(labels.count) labels for logits \(logits.shape)")
        let y = Tensor(shape: [labels.count], values: labels)
        let magnitude = logits.relu() + (-logits).relu()
        return (logits.relu() - y * logits + ((-magnitude).exp() + 1).log()).mean()
    }
}

extension CTRModel: Model {
    public var kind: String { "ctr" }

    public func saveWeights(to directory: String) throws {
        var tensors: [String: Tensor] = [:]
        for (name, parameter) in namedParameters() { tensors[name] = parameter }
        let shape = configuration
        try SafeTensors(tensors: tensors, metadata: [
            "model": "ctr", "embedding_width": String(shape.embeddingWidth), "hidden_width": String(shape.hiddenWidth),
            "dense_features": String(shape.denseFeatures), "tables": String(shape.tableCount),
        ]).write(to: directory + "/" + Self.weightsFileName)
    }

    public func loadWeights(from directory: String) throws {
        let saved = try checkedWeights(in: directory)
        for (name, parameter) in namedParameters() {
            parameter.contiguousFloats.update(from: saved[name]!.converted(to: .float32).contiguous().floatPointer, count: parameter.count)
        }
    }

    public func checkWeightsCompatible(in directory: String) throws { _ = try checkedWeights(in: directory) }

    /// Every parameter's saved tensor, checked for presence and shape before anything is written.
    private func checkedWeights(in directory: String) throws -> [String: Tensor] {
        let path = directory + "/" + Self.weightsFileName
        let file = try SafeTensors.read(contentsOf: path)
        for (name, parameter) in namedParameters() {
            guard let tensor = file.tensors[name], tensor.shape == parameter.shape else {
                throw ConvoyError.incompatible("\(path) has \(file.tensors[name].map { "'\(name)' of shape \($0.shape)" } ?? "no '\(name)'"); this CTR model's is \(parameter.shape) (embedding width \(configuration.embeddingWidth), hidden \(configuration.hiddenWidth), \(configuration.tableCount) tables)")
            }
        }
        return file.tensors
    }
}
