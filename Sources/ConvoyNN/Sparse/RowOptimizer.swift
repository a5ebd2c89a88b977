import ConvoyTensor
import Foundation

/// The update rule of embedding rows (and of dense parameters on a parameter server, as rows of width 1):
/// every row keeps its own optimizer state, touched only when the row receives a gradient ("lazy" state, as
/// PaddlePaddle's and TensorFlow's sparse optimizers do), so a step costs the rows a batch touched, not the table.
///
/// - SGD: w −= lr·g.
/// - Adagrad, PaddlePaddle's sparse rule (`SparseAdaGradSGDRule`): one accumulator per row, starting at 0;
///   w −= lr·g·√(a₀ / (a₀ + G)), then G += mean(g²) over the row. Paddle's defaults are lr 0.05 and initial
///   accumulator a₀ = 3.
/// - Adam (lazy): per row m, v and its own step count t (bias correction uses the row's t, so a rarely seen
///   row is not corrected as if it had been updated every step); AdamW adds decoupled weight decay.
public struct RowOptimizer: Sendable, Equatable {
    public enum Kind: String, Sendable, CaseIterable { case sgd, adagrad, adam, adamw }

    public var kind: Kind
    public var beta1: Float = 0.9
    public var beta2: Float = 0.999
    public var epsilon: Float = 1e-8
    public var weightDecay: Float = 0
    /// Adagrad's a₀ (Paddle: `initial_g2sum` 3).
    public var initialAccumulator: Float = 3

    public init(kind: Kind, beta1: Float = 0.9, beta2: Float = 0.999, weightDecay: Float = 0, initialAccumulator: Float = 3) {
        self.kind = kind
        self.beta1 = beta1
        self.beta2 = beta2
        self.weightDecay = weightDecay
        self.initialAccumulator = initialAccumulator
    }

    /// Paddle's sparse Adagrad defaults (`lr` 0.05 goes with it; the learning rate is the caller's).
    public static let paddleSparseAdagradLearningRate: Float = 0.05

    /// Floats of state one row of `width` keeps (0 for SGD; 1 for Adagrad; m, v and t for Adam).
    public func stateCount(width: Int) -> Int {
        switch kind {
        case .sgd: return 0
        case .adagrad: return 1
        case .adam, .adamw: return 2 * width + 1
        }
    }

    /// Applies one update to `row` (`width` floats) from `gradient` multiplied by `scale`; `state` holds the
    /// row's ``stateCount(width:)`` floats (zeros before the row's first update).
    public func update(row: UnsafeMutablePointer<Float>, gradient: UnsafePointer<Float>, scale: Float, state: UnsafeMutablePointer<Float>,
                       width: Int, learningRate lr: Float) {
        switch kind {
        case .sgd:
            for i in 0..<width { row[i] -= lr * (gradient[i] * scale) }
        case .adagrad:
            let factor = lr * (initialAccumulator / (initialAccumulator + state[0])).squareRoot()
            var squares: Float = 0
            for i in 0..<width {
                let g = gradient[i] * scale
                row[i] -= factor * g
                squares += g * g
            }
            state[0] += squares / Float(width)
        case .adam, .adamw:
            let m = state, v = state + width
            let t = state[2 * width] + 1
            state[2 * width] = t
            let correction1 = 1 - Self.power(beta1, t), correction2 = 1 - Self.power(beta2, t)
            let decay = kind == .adamw ? 1 - lr * weightDecay : 1
            for i in 0..<width {
                let g = gradient[i] * scale
                m[i] = beta1 * m[i] + (1 - beta1) * g
                v[i] = beta2 * v[i] + (1 - beta2) * g * g
                row[i] = row[i] * decay - lr * (m[i] / correction1) / ((v[i] / correction2).squareRoot() + epsilon)
            }
        }
    }

    static func power(_ base: Float, _ exponent: Float) -> Float { Float(Foundation.pow(Double(base), Double(exponent))) }
}
