import Synchronization

/// How much of the column-parallel input-gradient all-reduces ran while the weight-gradient GEMMs computed:
/// per all-reduce, its interval (issue → completion) and the GEMMs' interval; the overlap is their intersection.
public final class OverlapMeter: Sendable {
    private struct Totals {
        var communicationNanoseconds: UInt64 = 0
        var hiddenNanoseconds: UInt64 = 0
        var count = 0
    }
    private let totals = Mutex(Totals())

    public init() {}

    func record(communication: Range<UInt64>, compute: Range<UInt64>) {
        let hidden = communication.clamped(to: compute)
        totals.withLock {
            $0.communicationNanoseconds += communication.upperBound - communication.lowerBound
            $0.hiddenNanoseconds += hidden.upperBound - hidden.lowerBound
            $0.count += 1
        }
    }

    /// All-reduces measured.
    public var count: Int { totals.withLock { $0.count } }
    /// Seconds the measured all-reduces took from issue to completion.
    public var communicationSeconds: Double { totals.withLock { Double($0.communicationNanoseconds) / 1e9 } }
    /// The share of that time during which the weight-gradient GEMMs computed (0 … 1).
    public var overlappedFraction: Double {
        totals.withLock { $0.communicationNanoseconds == 0 ? 0 : Double($0.hiddenNanoseconds) / Double($0.communicationNanoseconds) }
    }
    /// Forgets what was measured.
    public func reset() { totals.withLock { $0 = Totals() } }
}
