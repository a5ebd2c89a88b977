import ConvoyTensor

/// The shape of the click-through-rate model: one embedding table per categorical feature (Criteo has 26),
/// the dense features (13), and the MLP over their concatenation.
public struct CTRConfiguration: Sendable, Equatable {
    /// Rows of each categorical feature's table.
    public var vocabularySizes: [Int]
    /// Width of every embedding row.
    public var embeddingWidth: Int
    public var denseFeatures: Int
    /// Width of the MLP's two hidden layers.
    public var hiddenWidth: Int

    /// Criteo's layout: 26 categorical and 13 integer features.
    public static let criteoCategoricalFeatures = 26
    public static let criteoDenseFeatures = 13

    public init(vocabularySizes: [Int], embeddingWidth: Int = 16, denseFeatures: Int = CTRConfiguration.criteoDenseFeatures, hiddenWidth: Int = 64) {
        self.vocabularySizes = vocabularySizes
        self.embeddingWidth = embeddingWidth
        self.denseFeatures = denseFeatures
        self.hiddenWidth = hiddenWidth
    }

    public var tableCount: Int { vocabularySizes.count }
    /// Width of the MLP's input: every embedded feature, then the dense features.
    public var inputWidth: Int { tableCount * embeddingWidth + denseFeatures }

    public func validate() throws {
        guard !vocabularySizes.isEmpty, vocabularySizes.allSatisfy({ $0 >= 1 && $0 <= Int(Int32.max) }) else {
            throw ConvoyError.invalidConfiguration("every CTR embedding table needs 1...\(Int32.max) rows, got \(vocabularySizes)")
        }
        guard embeddingWidth >= 1, hiddenWidth >= 1, denseFeatures >= 0 else {
            throw ConvoyError.invalidConfiguration("CTR widths must be positive (embedding \(embeddingWidth), hidden \(hiddenWidth)) and dense features non-negative (\(denseFeatures))")
        }
    }
}
