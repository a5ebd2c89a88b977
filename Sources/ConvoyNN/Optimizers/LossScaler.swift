/// The state of loss scaling over a run: the current scale and the run of finite steps since it last changed.
///
/// Every rank keeps its own scaler and feeds it the same decision each step (whether the step's gradients were
/// finite everywhere, agreed over the whole mesh by the gradient norm's reduction), so the scales never
/// diverge; the checkpoint saves ``scale`` and ``goodSteps`` so a resumed run continues with them.
public final class LossScaler {
    /// The policy.
    public let scaling: LossScaling
    /// The factor the loss is multiplied by before backward (1 without scaling).
    public private(set) var scale: Float
    /// Consecutive steps with finite gradients since the scale last changed.
    public private(set) var goodSteps = 0
    /// Steps skipped so far in this process (not saved).
    public private(set) var skippedSteps = 0

    public init(_ scaling: LossScaling) {
        self.scaling = scaling
        switch scaling {
        case .none: scale = 1
        case .fixed(let factor): scale = factor
        case .dynamic(let initial, _): scale = initial
        }
    }

    /// Whether a step whose gradients are not finite is skipped rather than applied.
    public var skipsNonFiniteSteps: Bool { scaling != .none }

    /// Records one step's outcome. Dynamic scaling halves the scale after a non-finite step and doubles it
    /// after `growthInterval` finite ones in a row.
    public func update(gradientsFinite: Bool) {
        if !gradientsFinite && skipsNonFiniteSteps { skippedSteps += 1 }
        guard case .dynamic(_, let interval) = scaling else { return }
        if gradientsFinite {
            goodSteps += 1
            if goodSteps >= interval {
                scale *= 2
                goodSteps = 0
            }
        } else {
            // Stay a normal number however often steps overflow.
            scale = max(scale * 0.5, .leastNormalMagnitude)
            goodSteps = 0
        }
    }

    /// Continues from a checkpoint's saved state.
    public func restore(scale: Float, goodSteps: Int) {
        self.scale = scale
        self.goodSteps = goodSteps
    }
}
