import ConvoyParallel
import Foundation

/// What `convoy plan --rules` prints: the composition table, every feature alone and every pair of features,
/// each allowed, allowed under a stated condition, or refused with the reason.
enum RulesReport {
    /// Every feature alone, then every pair, with its verdict (pairs the table does not list compose freely).
    static func rows() -> [(features: [ParallelFeature], verdict: String, text: String)] {
        let features = ParallelFeature.allCases
        var combinations = features.map { [$0] }
        for (index, first) in features.enumerated() {
            for second in features[(index + 1)...] { combinations.append([first, second]) }
        }
        return combinations.map { combination in
            switch CompositionRules.rule(for: combination)?.verdict {
            case .allowed(let text)?: return (combination, "allowed", text)
            case .conditional(let text)?: return (combination, "conditional", text)
            case .refused(let text)?: return (combination, "refused", text)
            case nil: return (combination, "allowed", combination.count == 1 ? "no conditions" : "independent: neither changes what the other does")
            }
        }
    }

    static func table() -> String {
        var lines = ["features:"]
        for feature in ParallelFeature.allCases { lines.append("  \(feature.rawValue.padding(toLength: 22, withPad: " ", startingAt: 0)) \(feature.meaning)") }
        lines.append("")
        lines.append("combination                                   verdict      condition or reason")
        for row in rows() {
            let name = row.features.map(\.rawValue).joined(separator: " + ")
            lines.append(name.padding(toLength: max(45, name.count), withPad: " ", startingAt: 0) + " " + row.verdict.padding(toLength: 12, withPad: " ", startingAt: 0) + " " + row.text)
        }
        return lines.joined(separator: "\n")
    }

    static func json() -> String {
        let object = rows().map { ["features": $0.features.map(\.rawValue), "verdict": $0.verdict, "text": $0.text] as [String: Any] }
        let data = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])) ?? Data("[]".utf8)
        return String(decoding: data, as: UTF8.self)
    }
}
