import ConvoyComm
import ConvoyTensor
import Foundation

/// Cross-entropy over logits sharded along the vocabulary (Megatron's vocab-parallel cross-entropy): each rank
/// holds classes `firstClass ..< firstClass + local` of every row, and the full [rows, vocabulary] logits are
/// never gathered. Three all-reduces of one scalar per row make the softmax whole: the row maximum, the
/// target's logit (held by one rank) and the sum of exponentials. Classes at or beyond `classes` (padding of
/// the vocabulary to a multiple of tp) take no part. The backward needs no communication: each rank's
/// gradient is softmax − one-hot on its own classes.
enum VocabParallelCrossEntropy {
    static func loss(logits: Tensor, targets: [Int32], firstClass: Int, classes: Int, group: any ProcessGroup,
                     engine: TensorParallelEngine? = nil) throws -> Tensor {
        let local = logits.shape.last ?? 1
        let input = logits.detached().contiguous()
        let rows = input.count / local
        precondition(targets.count == rows, "crossEntropy: \(targets.count) targets for \(rows) rows of logits \(logits.shape)")
        // Local columns that are real classes.
        let valid = Swift.max(0, Swift.min(local, classes - firstClass))
        let xp = input.floatPointer
        let maxima = Tensor(uninitializedShape: [rows]), targetLogits = Tensor.zeros([rows]), sums = Tensor(uninitializedShape: [rows])
        let mp = maxima.floatPointer, tp = targetLogits.floatPointer, sp = sums.floatPointer
        for r in 0..<rows {
            mp[r] = valid > 0 ? VectorMath.max(xp + r * local, valid) : -Float.greatestFiniteMagnitude
            let column = Int(targets[r]) - firstClass
            if targets[r] != Tensor.ignoredTarget && column >= 0 && column < valid { tp[r] = xp[r * local + column] }
        }
        try Redistribution.reduce(maxima, group: group, operation: .max)
        try Redistribution.reduce(targetLogits, group: group)
        for r in 0..<rows {
            let row = xp + r * local
            var sum: Float = 0
            for j in 0..<valid { sum += VectorMath.exp(row[j] - mp[r]) }
            sp[r] = sum
        }
        try Redistribution.reduce(sums, group: group)
        let counted = targets.reduce(0) { $0 + ($1 == Tensor.ignoredTarget ? 0 : 1) }
        var total = 0.0
        for r in 0..<rows where targets[r] != Tensor.ignoredTarget {
            total += Double((mp[r] - tp[r]) + Foundation.log(sp[r]))
        }
        let result = Tensor(scalar: Float(total / Double(Swift.max(counted, 1))))
        return Tensor.record(result, operation: "vocab-parallel crossEntropy", inputs: [logits]) { gradient in
            try engine?.checkFailure()
            let xp = input.floatPointer, mp = maxima.floatPointer, sp = sums.floatPointer
            let scale = gradient.scalarValue / Float(Swift.max(counted, 1))
            let dLogits = Tensor.zeros(logits.shape)
            let dp = dLogits.floatPointer
            for r in 0..<rows where targets[r] != Tensor.ignoredTarget {
                let row = xp + r * local, out = dp + r * local
                let shift = mp[r], inverse = 1 / sp[r]
                for j in 0..<valid { out[j] = VectorMath.exp(row[j] - shift) * inverse * scale }
                let column = Int(targets[r]) - firstClass
                if column >= 0 && column < valid { out[column] -= scale }
            }
            return [dLogits]
        }
    }
}
