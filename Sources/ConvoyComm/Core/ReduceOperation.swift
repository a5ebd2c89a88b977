/// How a reduction combines the ranks' values.
public enum ReduceOperation: String, Sendable, CaseIterable, Codable {
    case sum
    /// The sum divided by the group size.
    case average
    case max
    case min
}
