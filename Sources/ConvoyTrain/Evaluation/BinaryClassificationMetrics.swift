import Foundation

/// AUC and log loss of predicted click probabilities.
public enum BinaryClassificationMetrics {
    /// The area under the ROC curve: the probability that a random positive scores above a random negative
    /// (ties count half), by the rank-sum (Mann–Whitney) formula. 0.5 when one class is absent.
    public static func auc(scores: [Double], labels: [Float]) -> Double {
        precondition(scores.count == labels.count, "AUC: \(scores.count) scores for \(labels.count) labels")
        let order = scores.indices.sorted { scores[$0] < scores[$1] }
        var rankSum = 0.0
        var start = 0
        while start < order.count {
            var end = start
            while end + 1 < order.count && scores[order[end + 1]] == scores[order[start]] { end += 1 }
            let averageRank = Double(start + end) / 2 + 1
            for k in start...end where labels[order[k]] > 0.5 { rankSum += averageRank }
            start = end + 1
        }
        let positives = Double(labels.filter { $0 > 0.5 }.count), negatives = Double(labels.count) - positives
        guard positives > 0, negatives > 0 else { return 0.5 }
        return (rankSum - positives * (positives + 1) / 2) / (positives * negatives)
    }

    /// Mean −[y log p + (1 − y) log(1 − p)], with p clamped away from 0 and 1.
    public static func logLoss(probabilities: [Double], labels: [Float]) -> Double {
        precondition(probabilities.count == labels.count && !labels.isEmpty, "log loss needs one probability per label")
        var total = 0.0
        for (p, y) in zip(probabilities, labels) {
            let q = min(max(p, 1e-7), 1 - 1e-7)
            total -= y > 0.5 ? Foundation.log(q) : Foundation.log(1 - q)
        }
        return total / Double(labels.count)
    }
}
