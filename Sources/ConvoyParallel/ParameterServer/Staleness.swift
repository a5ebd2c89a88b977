import ConvoyTensor
import Foundation

/// The one consistency knob of parameter-server training (`--staleness K|inf`): how many steps a worker may
/// run ahead of the slowest worker. 0 is BSP (every step sees every worker's previous updates: the same as one
/// process given the global batch), K > 0 is SSP (a worker at clock c waits until every worker has reached
/// c − K), unbounded is ASP (nobody waits).
public enum Staleness: Sendable, Equatable, CustomStringConvertible {
    case bounded(Int)
    case unbounded

    /// Parses "0", "2", "inf"; a negative or unreadable value is an error saying what to write instead.
    public init(parsing text: String) throws {
        let trimmed = text.trimmingCharacters(in: .whitespaces).lowercased()
        if trimmed == "inf" || trimmed == "infinity" || trimmed == "asp" {
            self = .unbounded
            return
        }
        guard let value = Int(trimmed) else {
            throw ConvoyError.invalidConfiguration("staleness \"\(text)\" is not a number of steps; use 0 (BSP), a positive K (SSP) or inf (ASP)")
        }
        guard value >= 0 else {
            throw ConvoyError.invalidConfiguration("staleness \(value) is negative; use 0 (BSP), a positive K (SSP) or inf (ASP)")
        }
        self = .bounded(value)
    }

    public var description: String {
        switch self {
        case .bounded(let k): return String(k)
        case .unbounded: return "inf"
        }
    }

    /// BSP: updates of one step are applied together, once every worker has pushed its share.
    public var isSynchronous: Bool { self == .bounded(0) }

    /// The clock every worker must have reached before a worker at `clock` may read (nil: no wait).
    public func requiredSlowestClock(forClock clock: Int) -> Int? {
        switch self {
        case .bounded(let k): return clock - k
        case .unbounded: return nil
        }
    }

    /// "BSP", "SSP(K=2)", "ASP".
    public var modeName: String {
        switch self {
        case .bounded(0): return "BSP"
        case .bounded(let k): return "SSP(K=\(k))"
        case .unbounded: return "ASP"
        }
    }
}
