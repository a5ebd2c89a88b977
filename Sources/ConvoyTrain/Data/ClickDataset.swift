import ConvoyTensor

/// One click-through example in Criteo's layout: a 0/1 click label, dense features and one id per
/// categorical feature (already a row of that feature's table).
public struct ClickExample: Sendable, Equatable {
    public var label: Float
    public var dense: [Float]
    public var ids: [Int32]
    /// The hidden model's click probability (generated data only): what the best possible model predicts.
    public var trueProbability: Float?

    public init(label: Float, dense: [Float], ids: [Int32], trueProbability: Float? = nil) {
        self.label = label
        self.dense = dense
        self.ids = ids
        self.trueProbability = trueProbability
    }
}

/// A source of click-through examples: training example i of the endless (or cycled) stream, and a fixed
/// validation set.
public protocol ClickDataset: Sendable {
    /// One line for people.
    var summary: String { get }
    /// Rows of each categorical feature's table.
    var vocabularySizes: [Int] { get }
    var denseFeatures: Int { get }
    /// Training example `index` (any index; the same on every rank).
    func trainingExample(_ index: Int) -> ClickExample
    var validationExamples: [ClickExample] { get }
    /// The AUC of the hidden model's probabilities on the validation set (nil when unknown, as for real data).
    var bestAchievableAUC: Double? { get }
}

extension ClickDataset {
    /// Throws, naming the example and the feature, unless every id of `example` is a row of its table.
    public func check(_ example: ClickExample, index: Int) throws {
        guard example.ids.count == vocabularySizes.count, example.dense.count == denseFeatures else {
            throw ConvoyError.invalidArgument("example \(index) has \(example.ids.count) ids and \(example.dense.count) dense features; the model takes \(vocabularySizes.count) and \(denseFeatures)")
        }
        for (feature, id) in example.ids.enumerated() where id < 0 || Int(id) >= vocabularySizes[feature] {
            throw ConvoyError.invalidArgument("example \(index): id \(id) of categorical feature \(feature) is outside its table's rows 0..<\(vocabularySizes[feature]); ids must be non-negative and below the table size (raise --ctr-vocabulary or fix the data)")
        }
    }
}
