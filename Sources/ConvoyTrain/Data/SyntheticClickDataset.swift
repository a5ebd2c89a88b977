import ConvoyTensor
import Foundation

/// Generated click-through data in Criteo's layout, for training and benchmarks without the real data set.
///
/// Example i is a pure function of (seed, i): each categorical id is Zipf-distributed over its table (rank
/// r has probability ∝ r^−s, drawn by inverting the continuous power law), the dense features are N(0, 1), and
/// the click is drawn from a hidden logistic model — a bias, one hidden weight per (feature, id) and one per
/// dense feature. The hidden model's probabilities are kept, so the best AUC any model can reach on the
/// validation set is known (``bestAchievableAUC``).
public struct SyntheticClickDataset: ClickDataset {
    public let seed: UInt64
    public let vocabularySizes: [Int]
    public let denseFeatures: Int
    public let zipfExponent: Double
    public let validationExamples: [ClickExample]
    public let bestAchievableAUC: Double?

    /// Validation examples come from a separate index range, never seen in training.
    private static let validationOffset = 1 << 40

    public init(seed: UInt64, vocabularySizes: [Int], denseFeatures: Int = 13, zipfExponent: Double = 1.1, validationCount: Int = 4096) throws {
        guard zipfExponent > 0 else { throw ConvoyError.invalidConfiguration("the Zipf exponent must be positive, got \(zipfExponent)") }
        guard validationCount >= 2 else { throw ConvoyError.invalidConfiguration("the validation set needs at least 2 examples, got \(validationCount)") }
        self.seed = seed
        self.vocabularySizes = vocabularySizes
        self.denseFeatures = denseFeatures
        self.zipfExponent = zipfExponent
        let partial = SyntheticClickDataset(unvalidatedSeed: seed, vocabularySizes: vocabularySizes, denseFeatures: denseFeatures, zipfExponent: zipfExponent)
        let validation = (0..<validationCount).map { partial.example(Self.validationOffset + $0) }
        validationExamples = validation
        bestAchievableAUC = BinaryClassificationMetrics.auc(scores: validation.map { Double($0.trueProbability!) }, labels: validation.map(\.label))
    }

    private init(unvalidatedSeed seed: UInt64, vocabularySizes: [Int], denseFeatures: Int, zipfExponent: Double) {
        self.seed = seed
        self.vocabularySizes = vocabularySizes
        self.denseFeatures = denseFeatures
        self.zipfExponent = zipfExponent
        validationExamples = []
        bestAchievableAUC = nil
    }

    public var summary: String {
        "generated click data (\(vocabularySizes.count) categorical features, Zipf \(zipfExponent), tables of \(Set(vocabularySizes).sorted().map(String.init).joined(separator: "/")) rows, \(denseFeatures) dense)"
    }

    public func trainingExample(_ index: Int) -> ClickExample { example(index) }

    /// The id of Zipf rank drawn from u ∈ [0, 1) over `rows` rows: rank 1 (id 0) is the most frequent.
    static func zipfID(_ u: Float, rows: Int, exponent s: Double) -> Int32 {
        let n = Double(rows)
        let rank: Double
        if abs(s - 1) < 1e-9 {
            rank = Foundation.exp(Double(u) * Foundation.log(n + 1))
        } else {
            let top = Foundation.pow(n + 1, 1 - s)
            rank = Foundation.pow((top - 1) * Double(u) + 1, 1 / (1 - s))
        }
        return Int32(min(max(Int(rank) - 1, 0), rows - 1))
    }

    func example(_ index: Int) -> ClickExample {
        let key = UInt64(index)
        let idStream = PhiloxRandom(seed: seed, stream: PhiloxRandom.mix(PhiloxRandom.streamID("click-ids"), key))
        let denseStream = PhiloxRandom(seed: seed, stream: PhiloxRandom.mix(PhiloxRandom.streamID("click-dense"), key))
        let labelStream = PhiloxRandom(seed: seed, stream: PhiloxRandom.mix(PhiloxRandom.streamID("click-label"), key))
        let ids = vocabularySizes.enumerated().map { feature, rows in Self.zipfID(idStream.uniform(at: UInt64(feature)), rows: rows, exponent: zipfExponent) }
        let dense = (0..<denseFeatures).map { denseStream.normal(at: UInt64($0)) }
        var logit: Float = -1
        for (feature, id) in ids.enumerated() { logit += 0.6 * hiddenWeight(feature: feature, id: id) }
        for (j, value) in dense.enumerated() { logit += 0.3 * hiddenWeight(feature: 1000 + j, id: 0) * value }
        let probability = 1 / (1 + Foundation.exp(-logit))
        let label: Float = labelStream.uniform(at: 0) < probability ? 1 : 0
        return ClickExample(label: label, dense: dense, ids: ids, trueProbability: probability)
    }

    private func hiddenWeight(feature: Int, id: Int32) -> Float {
        PhiloxRandom(seed: seed ^ 0x5EED_C11C, stream: PhiloxRandom.mix(UInt64(feature), UInt64(id))).normal(at: 0)
    }
}
