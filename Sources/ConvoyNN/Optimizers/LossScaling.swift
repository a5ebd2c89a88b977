import ConvoyTensor

/// How the loss is scaled before backward, so small gradients survive a low-precision backward (the AMP
/// meta-optimizer): not at all, by a fixed factor, or dynamically (``LossScaler``).
public enum LossScaling: Sendable, Equatable, CustomStringConvertible {
    /// No scaling; a step whose gradients are not finite is not skipped (the run's loss shows the divergence).
    case none
    /// A fixed factor; steps with Inf/NaN gradients are skipped.
    case fixed(Float)
    /// Starts at `initial`, doubles after `growthInterval` consecutive finite steps, halves and skips the step
    /// on Inf/NaN gradients.
    case dynamic(initial: Float, growthInterval: Int)

    /// PyTorch's and Megatron's defaults: 2^16, doubled after 2000 good steps.
    public static let standardDynamic = LossScaling.dynamic(initial: 65536, growthInterval: 2000)

    /// Reads `dynamic`, `none` or a positive finite number.
    ///
    /// - Throws: ``ConvoyTensor/ConvoyError/invalidConfiguration(_:)`` for anything else.
    public init(parsing text: String) throws {
        switch text.lowercased() {
        case "none": self = .none
        case "dynamic": self = .standardDynamic
        default:
            guard let factor = Float(text), factor.isFinite, factor > 0 else {
                throw ConvoyError.invalidConfiguration("loss scale \"\(text)\" is not dynamic, none or a positive number (such as 1024)")
            }
            self = .fixed(factor)
        }
    }

    public var description: String {
        switch self {
        case .none: return "none"
        case .fixed(let factor): return "fixed \(factor)"
        case .dynamic(let initial, let interval): return "dynamic (from \(initial), ×2 after \(interval) good steps)"
        }
    }
}
