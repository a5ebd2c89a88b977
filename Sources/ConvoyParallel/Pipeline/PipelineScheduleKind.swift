import ConvoyTensor

/// The order in which every pipeline rank runs the forwards and backwards of one step's micro-batches.
///
/// All three give the same gradients; they differ in bubble (idle time) and in how many micro-batches' activations
/// a rank must keep alive at once. See ``PipelineSchedule`` for the exact instruction lists.
public enum PipelineScheduleKind: String, Sendable, CaseIterable {
    /// GPipe / PaddlePaddle's "F-then-B": all forwards, then all backwards. Every rank stashes all `m`
    /// micro-batches; bubble (p−1)/(m+p−1).
    case gpipe = "gpipe"
    /// PipeDream-flush / Megatron's non-interleaved 1F1B: a warm-up of forwards, then alternating forward and
    /// backward. Same bubble as GPipe, but rank `r` stashes at most `min(pp − r, m)` micro-batches.
    case oneForwardOneBackward = "1f1b"
    /// Megatron-Core's interleaved 1F1B: each rank holds `v` model chunks, which cuts the bubble to about
    /// (p−1)/(v·m+p−1) at the price of `v` times more point-to-point messages.
    case interleaved = "interleaved-1f1b"

    /// Reads a schedule name from a config file or flag: the raw values, or "GPipe", "F-then-B", "1F1B",
    /// "interleaved", in any letter case.
    ///
    /// - Throws: ``ConvoyTensor/ConvoyError/invalidConfiguration(_:)`` listing the accepted names.
    public init(parsing name: String) throws {
        switch name.lowercased() {
        case "gpipe", "f-then-b", "fthenb": self = .gpipe
        case "1f1b": self = .oneForwardOneBackward
        case "interleaved-1f1b", "interleaved": self = .interleaved
        default:
            throw ConvoyError.invalidConfiguration(
                "unknown pipeline schedule \"\(name)\"; use gpipe (or F-then-B), 1f1b, or interleaved-1f1b (or interleaved)")
        }
    }
}
