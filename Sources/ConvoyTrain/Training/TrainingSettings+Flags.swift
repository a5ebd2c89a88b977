import ConvoyTensor

/// The command line generated from ``TrainingSettings/all``: the flag parser and the `--help` text.
extension TrainingSettings {
    /// Parses setting flags (`--lr 3e-4`, `--lr=3e-4`) into (flag, value) pairs for
    /// ``resolve(configFile:flags:)``, in order (a later flag overrides an earlier one).
    ///
    /// Every setting flag takes a value, so the argument after a flag is its value even when it starts with a
    /// dash (`--steps -5` reaches the range check: "--steps: -5 is out of range; use a value in 1...100000000").
    /// An unknown flag is an error suggesting the closest known one; `otherFlags` (the command's own options,
    /// such as `--config`) are suggested too.
    public static func parseFlags(_ arguments: [String], otherFlags: [String] = []) throws -> [(flag: String, value: String)] {
        var flags: [(flag: String, value: String)] = []
        var index = arguments.startIndex
        while index < arguments.endIndex {
            let argument = arguments[index]
            index += 1
            guard argument.hasPrefix("--"), argument.count > 2 else {
                throw ConvoyError.invalidConfiguration("unexpected argument '\(argument)'; settings are given as --flag value (see convoy train --help)")
            }
            let flag: String, value: String
            if let equals = argument.firstIndex(of: "=") {
                flag = String(argument[..<equals])
                value = String(argument[argument.index(after: equals)...])
            } else {
                flag = argument
                guard let setting = byFlag[flag] else { throw unknownFlag(flag, otherFlags: otherFlags) }
                // A boolean flag alone means true (`--overwrite`); it takes the next argument only when that is a
                // boolean word (`--bucketing false`).
                if setting.type == .boolean, index == arguments.endIndex || !Self.booleanWords.contains(arguments[index].lowercased()) {
                    flags.append((flag, "true"))
                    continue
                }
                guard index < arguments.endIndex else {
                    throw ConvoyError.invalidConfiguration("\(flag) needs a value: \(setting.type)")
                }
                value = arguments[index]
                index += 1
            }
            guard byFlag[flag] != nil else { throw unknownFlag(flag, otherFlags: otherFlags) }
            flags.append((flag, value))
        }
        return flags
    }

    /// The words a boolean setting accepts as its value.
    static let booleanWords: Set<String> = ["true", "false", "on", "off", "yes", "no", "1", "0"]

    /// "unknown flag --x; did you mean --y?"
    static func unknownFlag(_ flag: String, otherFlags: [String] = []) -> ConvoyError {
        let suggestion = closest(to: flag, among: all.map(\.flag) + otherFlags).map { "; did you mean \($0)?" } ?? "; run convoy train --help for the list"
        return .invalidConfiguration("unknown flag \(flag)\(suggestion)")
    }

    /// The candidate nearest to `word` by edit distance, if it is near enough to be a plausible typo.
    static func closest(to word: String, among candidates: [String]) -> String? {
        let scored = candidates.map { ($0, editDistance(word, $0)) }
        guard let best = scored.min(by: { $0.1 < $1.1 }) else { return nil }
        return best.1 <= max(2, word.count / 3) ? best.0 : nil
    }

    /// Levenshtein distance (insertions, deletions and substitutions each cost 1).
    private static func editDistance(_ a: String, _ b: String) -> Int {
        let a = Array(a), b = Array(b)
        guard !a.isEmpty, !b.isEmpty else { return max(a.count, b.count) }
        var previous = Array(0...b.count)
        for i in 1...a.count {
            var current = [i] + Array(repeating: 0, count: b.count)
            for j in 1...b.count {
                current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1))
            }
            previous = current
        }
        return previous[b.count]
    }

    /// The settings part of `convoy train --help`: every flag with its values, its TOML key and its help,
    /// grouped by TOML section.
    public static var flagHelp: String {
        var lines: [String] = ["SETTINGS (--flag value or --flag=value; [TOML key]):"]
        var section = ""
        for setting in all {
            let settingSection = String(setting.key[..<setting.key.lastIndex(of: ".")!])
            if settingSection != section {
                section = settingSection
                lines.append("")
                lines.append("  [\(section)]")
            }
            lines.append("  \(setting.flag) \(setting.type)")
            lines.append(contentsOf: wrap("\(setting.help) [\(setting.key)]", width: 72).map { "        " + $0 })
        }
        return lines.joined(separator: "\n")
    }

    /// Splits `text` into lines of at most `width` characters at spaces (the help printer would otherwise wrap
    /// long lines without their indentation).
    private static func wrap(_ text: String, width: Int) -> [String] {
        var lines: [String] = []
        var line = ""
        for word in text.split(separator: " ") {
            if !line.isEmpty && line.count + 1 + word.count > width {
                lines.append(line)
                line = ""
            }
            line += (line.isEmpty ? "" : " ") + word
        }
        if !line.isEmpty { lines.append(line) }
        return lines
    }
}
