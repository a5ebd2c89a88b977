import Foundation

/// Cross-entropy fused with log-softmax.
extension Tensor {
    /// Target value that contributes nothing to the loss (padding).
    public static let ignoredTarget: Int32 = -1

    /// Mean over rows of −log softmax(logits)[target]; logits are [..., classes], one target per row.
    /// Rows whose target is ``ignoredTarget`` are skipped (and excluded from the mean).
    public static func crossEntropy(logits: Tensor, targets: [Int32]) -> Tensor {
        if let placed = PlacementDeduction.dispatch(.crossEntropy(logits: logits, targets: targets)) { return placed }
        let classes = logits.shape.last ?? 1
        let input = logits.contiguous()
        let rows = input.count / classes
        precondition(targets.count == rows, "crossEntropy: \(targets.count) targets for \(rows) rows of logits \(logits.shape)")
        for target in targets where target != ignoredTarget && (target < 0 || Int(target) >= classes) {
            preconditionFailure("crossEntropy target \(target) is outside 0..<\(classes)")
        }
        let xp = input.floatPointer
        var logNormalizers = [Float](repeating: 0, count: rows)
        var losses = [Float](repeating: 0, count: rows)
        let valid = targets.reduce(0) { $0 + ($1 == ignoredTarget ? 0 : 1) }
        logNormalizers.withUnsafeMutableBufferPointer { lse in
            losses.withUnsafeMutableBufferPointer { loss in
                targets.withUnsafeBufferPointer { t in
                    ComputePool.current.parallelFor(rows, minimumChunk: 16) { range in
                        for r in range {
                            let row = xp + r * classes
                            let maximum = VectorMath.max(row, classes)
                            let m = VectorMath.Vector(repeating: maximum)
                            var total = VectorMath.Vector.zero
                            var j = 0
                            while j + 8 <= classes { total += VectorMath.exp(VectorMath.load(row + j) - m); j += 8 }
                            var sum = total.sum()
                            while j < classes { sum += VectorMath.exp(row[j] - maximum); j += 1 }
                            let logSum = Foundation.log(sum)
                            lse[r] = maximum + logSum
                            // (max − x[t]) + log Σ keeps full precision for large logits.
                            loss[r] = t[r] == ignoredTarget ? 0 : (maximum - row[Int(t[r])]) + logSum
                        }
                    }
                }
            }
        }
        // Sum in row order in Double so the loss does not depend on the thread count.
        var total = 0.0
        for loss in losses { total += Double(loss) }
        let result = Tensor(scalar: Float(total / Double(Swift.max(valid, 1))))
        return record(result, operation: "crossEntropy", inputs: [logits]) { gradient in
            // Re-derived from the tensor so the closure keeps the logits alive.
            let xp = input.floatPointer
            let scale = gradient.scalarValue / Float(Swift.max(valid, 1))
            let dLogits = Tensor(uninitializedShape: logits.shape)
            let dp = dLogits.floatPointer
            logNormalizers.withUnsafeBufferPointer { lse in
                targets.withUnsafeBufferPointer { t in
                    ComputePool.current.parallelFor(rows, minimumChunk: 16) { range in
                        for r in range {
                            let row = xp + r * classes, out = dp + r * classes
                            if t[r] == ignoredTarget { out.update(repeating: 0, count: classes); continue }
                            let shift = VectorMath.Vector(repeating: lse[r])
                            let s = VectorMath.Vector(repeating: scale)
                            var j = 0
                            while j + 8 <= classes {
                                VectorMath.store(VectorMath.exp(VectorMath.load(row + j) - shift) * s, out + j)
                                j += 8
                            }
                            while j < classes { out[j] = VectorMath.exp(row[j] - lse[r]) * scale; j += 1 }
                            out[Int(t[r])] -= scale
                        }
                    }
                }
            }
            return [dLogits]
        }
    }
}
