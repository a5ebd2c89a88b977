/// Reads a number out of a decoded JSON value (`JSONSerialization` gives integers or doubles) or a metrics
/// record being written (Double, Float or Int).
enum JSONNumber {
    static func double(_ value: Any?) -> Double? {
        switch value {
        case let value as Double: return value
        case let value as Float: return Double(value)
        case let value as Int: return Double(value)
        default: return nil
        }
    }
}
