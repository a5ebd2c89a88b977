/// What values a configuration setting takes: it decides how a flag's text is read and what `--help` says the
/// setting accepts. The same range or list of choices also checks the value, so help and validation cannot
/// disagree.
public enum SettingType: Sendable, Equatable, CustomStringConvertible {
    /// An integer in `range`.
    case integer(ClosedRange<Int>)
    /// A real number in `range`; with `upperExclusive` the upper bound itself is refused.
    case number(ClosedRange<Double>, upperExclusive: Bool)
    /// One of a few words (some settings also accept aliases, listed in their help).
    case choice([String])
    /// A file or directory path (non-empty).
    case path
    /// `true` or `false` (`on`/`off`, `yes`/`no`, `1`/`0` are accepted too).
    case boolean
    /// Positive integers separated by commas (`3,3`); a TOML array of integers in a file.
    case integerList
    /// Text of a form the setting checks itself; `placeholder` names the form in `--help` (`AXES`).
    case text(String)

    /// The value placeholder `--help` shows after the flag.
    public var description: String {
        switch self {
        case .integer(let range): return "<integer \(range.lowerBound)...\(range.upperBound)>"
        case .number(let range, let upperExclusive):
            return "<number \(Self.format(range.lowerBound))\(upperExclusive ? "..<" : "...")\(Self.format(range.upperBound))>"
        case .choice(let options): return "<\(options.joined(separator: "|"))>"
        case .path: return "<path>"
        case .boolean: return "<true|false>"
        case .integerList: return "<n,n,...>"
        case .text(let placeholder): return "<\(placeholder)>"
        }
    }

    /// Reads a flag's text as a value of this type (range checks come when the value is applied, with the
    /// same messages as for a TOML file).
    func value(fromFlag text: String) throws(SettingProblem) -> SettingValue {
        switch self {
        case .integer:
            guard let number = Int(text) else { throw SettingProblem("expected an integer, got '\(text)'") }
            return .integer(number)
        case .number:
            guard let number = Double(text) else { throw SettingProblem("expected a number, got '\(text)'") }
            return .real(number)
        case .choice, .path, .boolean, .integerList, .text:
            return .text(text)
        }
    }

    /// `1e-06` reads worse than `0.000001` in help; whole numbers print without a fraction.
    private static func format(_ number: Double) -> String {
        if number == number.rounded(), abs(number) < 1e15 { return String(Int(number)) }
        return String(number)
    }
}

/// Why a value does not fit its setting; the caller adds the TOML key or the flag it came from.
struct SettingProblem: Error {
    let message: String
    init(_ message: String) { self.message = message }
}
