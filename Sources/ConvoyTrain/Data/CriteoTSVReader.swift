import ConvoyTensor
import Foundation

/// Reads Criteo-format click logs: one example per line, 40 tab-separated fields — the 0/1 label, 13
/// integer features, 26 categorical features as hexadecimal hashes. Any feature may be empty (missing).
///
/// Integers become log(1 + max(x, 0)) (the usual Criteo transform; missing: 0). A hash h of a feature with V
/// rows becomes row 1 + h mod (V − 1); a missing one row 0. A line with another field count, a label other than
/// 0 or 1, or an unreadable number is an error naming the file and line.
public enum CriteoTSVReader {
    public static let fieldCount = 1 + CTRFields.dense + CTRFields.categorical

    public static func read(path: String, vocabularySizes: [Int], limit: Int? = nil) throws -> [ClickExample] {
        guard vocabularySizes.count == CTRFields.categorical else {
            throw ConvoyError.invalidConfiguration("Criteo data has \(CTRFields.categorical) categorical features; --ctr-vocabulary gives \(vocabularySizes.count) table sizes (give one for all, or 26)")
        }
        guard let data = FileManager.default.contents(atPath: path) else { throw ConvoyError.io("cannot read Criteo TSV file \(path)") }
        var examples: [ClickExample] = []
        var lineNumber = 0
        for line in data.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false) {
            lineNumber += 1
            var bytes = line
            if bytes.last == UInt8(ascii: "\r") { bytes = bytes.dropLast() }
            if bytes.isEmpty { continue }
            if let limit, examples.count >= limit { break }
            let fields = bytes.split(separator: UInt8(ascii: "\t"), omittingEmptySubsequences: false).map { String(decoding: $0, as: UTF8.self) }
            guard fields.count == fieldCount else {
                throw ConvoyError.malformedFile(path: path, reason: "line \(lineNumber) has \(fields.count) tab-separated fields; a Criteo row has \(fieldCount) (label, 13 integers, 26 hexadecimal ids; leave a missing field empty)")
            }
            guard let label = Int(fields[0]), label == 0 || label == 1 else {
                throw ConvoyError.malformedFile(path: path, reason: "line \(lineNumber): the label \"\(fields[0])\" is not 0 or 1")
            }
            var dense: [Float] = []
            for (j, field) in fields[1...CTRFields.dense].enumerated() {
                if field.isEmpty { dense.append(0); continue }
                guard let value = Double(field) else {
                    throw ConvoyError.malformedFile(path: path, reason: "line \(lineNumber): integer feature \(j + 1) \"\(field)\" is not a number")
                }
                dense.append(Float(Foundation.log1p(max(value, 0))))
            }
            var ids: [Int32] = []
            for (j, field) in fields[(1 + CTRFields.dense)...].enumerated() {
                let rows = vocabularySizes[j]
                if field.isEmpty || rows == 1 { ids.append(0); continue }
                guard let hash = UInt64(field, radix: 16) else {
                    throw ConvoyError.malformedFile(path: path, reason: "line \(lineNumber): categorical feature \(j + 1) \"\(field)\" is not hexadecimal")
                }
                ids.append(Int32(1 + hash % UInt64(rows - 1)))
            }
            examples.append(ClickExample(label: Float(label), dense: dense, ids: ids))
        }
        guard examples.count >= 2 else { throw ConvoyError.malformedFile(path: path, reason: "it holds \(examples.count) examples; at least 2 are needed") }
        return examples
    }
}

/// Criteo's field counts.
public enum CTRFields {
    public static let dense = 13
    public static let categorical = 26
}

/// Examples read from a Criteo TSV file: the last tenth (at least one) is the validation set; training cycles
/// through the rest.
public struct CriteoDataset: ClickDataset {
    public let path: String
    public let vocabularySizes: [Int]
    public let denseFeatures = CTRFields.dense
    private let training: [ClickExample]
    public let validationExamples: [ClickExample]
    public var bestAchievableAUC: Double? { nil }

    public init(path: String, vocabularySizes: [Int]) throws {
        self.path = path
        self.vocabularySizes = vocabularySizes
        let all = try CriteoTSVReader.read(path: path, vocabularySizes: vocabularySizes)
        let validationCount = max(1, all.count / 10)
        training = Array(all.dropLast(validationCount))
        validationExamples = Array(all.suffix(validationCount))
    }

    public var summary: String { "Criteo TSV \(path) (\(training.count) training, \(validationExamples.count) validation examples)" }
    public func trainingExample(_ index: Int) -> ClickExample { training[index % training.count] }
}
