/// One device a rank runs on, written the Hetu way: `cpu:0`, `host1:cpu:3`, and later `gpu:1`.
///
/// A device is `KIND:N` or `HOST:KIND:N`. The kind is one of ``knownKinds`` (the grammar already accepts GPUs
/// so that a CUDA backend needs no new syntax); `N` is a non-negative index; a host name uses ASCII letters,
/// digits, `-`, `.` and `_`. A device without a host means "this host".
public struct Device: Hashable, Sendable, CustomStringConvertible {
    /// The device kinds the grammar accepts.
    public static let knownKinds: [String] = ["cpu", "gpu"]

    /// The host the device belongs to; nil for the local host.
    public let host: String?
    /// The device kind, one of ``knownKinds``.
    public let kind: String
    /// The device's index among devices of its kind on its host.
    public let index: Int

    /// A device built in code. Use ``DeviceGroup/init(parsing:)`` for user input: it reports bad values as errors
    /// rather than stopping the program.
    public init(host: String? = nil, kind: String, index: Int) {
        precondition(Device.knownKinds.contains(kind), "unknown device kind \"\(kind)\"; expected one of \(Device.knownKindList)")
        precondition(index >= 0, "device index \(index) is negative; expected a non-negative integer")
        if let host {
            precondition(!host.isEmpty && host.allSatisfy(Device.isHostNameCharacter),
                         "bad host name \"\(host)\"; expected letters, digits, '-', '.' or '_'")
        }
        self.host = host
        self.kind = kind
        self.index = index
    }

    /// CPU `index` on `host` (nil: the local host).
    public static func cpu(_ index: Int, host: String? = nil) -> Device {
        Device(host: host, kind: "cpu", index: index)
    }

    /// `cpu:0` or `host1:cpu:3`: the form the parser reads back.
    public var description: String {
        if let host { return "\(host):\(kind):\(index)" }
        return "\(kind):\(index)"
    }

    static func isHostNameCharacter(_ character: Character) -> Bool {
        guard character.isASCII else { return false }
        return character.isLetter || character.isNumber || character == "-" || character == "." || character == "_"
    }

    static var knownKindList: String { knownKinds.map { "\"\($0)\"" }.joined(separator: ", ") }
}

/// A group of devices written as a string, as in Hetu's contexts: `"cpu:0"`, `"host1:cpu:3"`,
/// `"cpu:0,cpu:1"`, `"cpu:0; cpu:1 cpu:2"`, `"(cpu:0,cpu:1),(cpu:2,cpu:3)"`.
///
/// Entries are separated by commas, semicolons or whitespace (whitespace around a comma or semicolon is
/// ignored). An entry is one device, or a parenthesised tuple of devices that together hold one model-parallel
/// copy of what is placed on the group (the tuple's devices are separated the same way; tuples do not nest).
/// Every device appears at most once. A one-device tuple `"(cpu:0)"` is the same entry as `"cpu:0"`.
///
/// Malformed strings throw ``DeviceGroupError``, whose message quotes the string, gives the 0-based character
/// position of the problem and says what was expected there. ``description`` is the canonical spelling
/// (commas, no spaces) and parses back to an equal group.
public struct DeviceGroup: Sendable, Equatable, CustomStringConvertible {
    /// The entries in order: each is one device, or the devices of one model-parallel tuple.
    public var entries: [[Device]]

    /// A group built in code: `entries` must be non-empty, each entry non-empty, and no device may repeat.
    public init(_ entries: [[Device]]) {
        precondition(!entries.isEmpty, "a device group needs at least one entry")
        precondition(entries.allSatisfy { !$0.isEmpty }, "a device group entry needs at least one device")
        let devices = entries.flatMap { $0 }
        precondition(Set(devices).count == devices.count, "a device may appear only once in a device group: \(devices)")
        self.entries = entries
    }

    /// Parses a device-group string such as `"(cpu:0,cpu:1),(cpu:2,cpu:3)"`.
    ///
    /// - Throws: ``DeviceGroupError`` for an empty string, unbalanced or nested parentheses, an empty tuple, an
    ///   empty entry or trailing separator, a missing, negative or non-numeric index, an unknown kind, a bad host
    ///   name, or a device listed twice.
    public init(parsing text: String) throws(DeviceGroupError) {
        var parser = DeviceGroupParser(text)
        entries = try parser.parse()
    }

    /// All devices in order, tuples flattened.
    public var devices: [Device] { entries.flatMap { $0 } }

    /// Whether some entry is a tuple of several devices (a model-parallel group).
    public var isModelParallel: Bool { entries.contains { $0.count > 1 } }

    /// The canonical spelling, e.g. `(cpu:0,cpu:1),cpu:2`; parses back to an equal group.
    public var description: String {
        entries.map { entry in
            entry.count == 1 ? entry[0].description : "(" + entry.map(\.description).joined(separator: ",") + ")"
        }.joined(separator: ",")
    }
}

/// A malformed device-group string: quotes the string, points at the problem and says what was expected.
///
/// `description` reads, for example:
/// `device group "cpu:0,,cpu:1": empty entry at position 6; expected a device such as "cpu:0" or "host1:cpu:3" between separators`.
public struct DeviceGroupError: Error, CustomStringConvertible, Equatable, Sendable {
    /// The whole string that failed to parse.
    public let input: String
    /// The 0-based character offset of the problem in ``input``.
    public let position: Int
    /// What is wrong there.
    public let problem: String
    /// What the parser expected instead.
    public let expected: String

    public init(input: String, position: Int, problem: String, expected: String) {
        self.input = input
        self.position = position
        self.problem = problem
        self.expected = expected
    }

    public var description: String {
        "device group \(DeviceGroupError.quoted(input)): \(problem) at position \(position); expected \(expected)"
    }

    /// The input in double quotes, with quotes, backslashes and control characters escaped so that a string
    /// holding newlines or tabs (valid separators) still prints on one line.
    static func quoted(_ text: String) -> String {
        var result = "\""
        for character in text {
            switch character {
            case "\"": result += "\\\""
            case "\\": result += "\\\\"
            case "\n": result += "\\n"
            case "\r\n": result += "\\r\\n"
            case "\r": result += "\\r"
            case "\t": result += "\\t"
            default: result.append(character)
            }
        }
        return result + "\""
    }
}

/// Recursive descent over a token list: `group := entry (separator entry)*`,
/// `entry := device | "(" device (separator device)* ")"`, where a separator is `,` or `;` (with optional
/// whitespace around it) or whitespace alone.
private struct DeviceGroupParser {
    private enum TokenKind: Equatable {
        case word(String)
        case open
        case close
        case separator(Character)
    }

    private struct Token {
        let kind: TokenKind
        /// 0-based character offset of the token's first character.
        let position: Int
        /// Whether whitespace comes right before the token (whitespace between two entries separates them).
        let afterWhitespace: Bool
    }

    private let text: String
    private let tokens: [Token]
    private let endPosition: Int
    private var cursor = 0

    private static let deviceExample = "a device such as \"cpu:0\" or \"host1:cpu:3\""
    private static let indexExpectation = "a non-negative integer index, such as the 0 in \"cpu:0\""
    private static let hostExpectation = "a host name of letters, digits, '-', '.' or '_', such as \"host1\""

    init(_ text: String) {
        self.text = text
        let characters = Array(text)
        var tokens: [Token] = []
        var position = 0
        var sawWhitespace = false
        while position < characters.count {
            let character = characters[position]
            if character.isWhitespace {
                sawWhitespace = true
                position += 1
                continue
            }
            let kind: TokenKind
            let start = position
            switch character {
            case "(": kind = .open; position += 1
            case ")": kind = .close; position += 1
            case ",", ";": kind = .separator(character); position += 1
            default:
                var word = ""
                while position < characters.count, !DeviceGroupParser.isDelimiter(characters[position]) {
                    word.append(characters[position])
                    position += 1
                }
                kind = .word(word)
            }
            tokens.append(Token(kind: kind, position: start, afterWhitespace: sawWhitespace))
            sawWhitespace = false
        }
        self.tokens = tokens
        self.endPosition = characters.count
    }

    private static func isDelimiter(_ character: Character) -> Bool {
        character.isWhitespace || character == "(" || character == ")" || character == "," || character == ";"
    }

    private func error(_ problem: String, at position: Int, expected: String) -> DeviceGroupError {
        DeviceGroupError(input: text, position: position, problem: problem, expected: expected)
    }

    private var current: Token? { cursor < tokens.count ? tokens[cursor] : nil }

    mutating func parse() throws(DeviceGroupError) -> [[Device]] {
        guard !tokens.isEmpty else {
            throw error(text.isEmpty ? "empty string" : "no devices", at: 0, expected: "at least one device, such as \"cpu:0\" or \"host1:cpu:3\"")
        }
        var entries: [[Device]] = []
        var seen: [Device: Int] = [:]
        while true {
            let entry = try parseEntry(isFirst: entries.isEmpty)
            for (device, position) in entry {
                if let first = seen[device] {
                    throw error("duplicate device \"\(device)\" (first at position \(first))", at: position,
                                expected: "each device at most once in a group")
                }
                seen[device] = position
            }
            entries.append(entry.map(\.device))
            guard let next = current else { return entries }
            switch next.kind {
            case .separator(let character):
                cursor += 1
                if current == nil {
                    throw error("trailing separator '\(character)'", at: next.position,
                                expected: "another device after it, or nothing (remove the '\(character)')")
                }
            case .word, .open:
                guard next.afterWhitespace else {
                    throw error("missing separator before \(describe(next))", at: next.position,
                                expected: "',', ';' or whitespace between entries")
                }
            case .close:
                throw error("unmatched ')'", at: next.position, expected: "a '(' before it opening a model-parallel tuple, or no ')'")
            }
        }
    }

    /// One entry, at the start or after a separator.
    private mutating func parseEntry(isFirst: Bool) throws(DeviceGroupError) -> [(device: Device, position: Int)] {
        guard let token = current else {
            // parse() never asks for an entry past the end.
            throw error("missing entry", at: endPosition, expected: DeviceGroupParser.deviceExample)
        }
        switch token.kind {
        case .word(let word):
            cursor += 1
            return [(try parseDevice(word, at: token.position), token.position)]
        case .open:
            cursor += 1
            return try parseTuple(openedAt: token.position)
        case .separator:
            let context = isFirst ? "before the first separator" : "between separators"
            throw error("empty entry", at: token.position, expected: "\(DeviceGroupParser.deviceExample) \(context)")
        case .close:
            throw error("unmatched ')'", at: token.position, expected: "a '(' before it opening a model-parallel tuple, or no ')'")
        }
    }

    private mutating func parseTuple(openedAt openPosition: Int) throws(DeviceGroupError) -> [(device: Device, position: Int)] {
        var devices: [(device: Device, position: Int)] = []
        var lastSeparator: Token?
        while true {
            guard let token = current else {
                throw error("unclosed '('", at: openPosition, expected: "')' to close the model-parallel tuple opened there")
            }
            switch token.kind {
            case .word(let word):
                cursor += 1
                devices.append((try parseDevice(word, at: token.position), token.position))
                lastSeparator = nil
            case .open:
                throw error("nested '('", at: token.position,
                            expected: "a device: model-parallel tuples hold devices, not other tuples")
            case .close:
                if devices.isEmpty {
                    throw error("empty tuple", at: openPosition,
                                expected: "at least one device inside the parentheses, such as \"(cpu:0,cpu:1)\"")
                }
                if let lastSeparator, case .separator(let character) = lastSeparator.kind {
                    throw error("trailing separator '\(character)' inside a tuple", at: lastSeparator.position,
                                expected: "another device after it, or ')' right after the last device")
                }
                cursor += 1
                return devices
            case .separator:
                if devices.isEmpty || lastSeparator != nil {
                    throw error("empty entry", at: token.position,
                                expected: "\(DeviceGroupParser.deviceExample) \(devices.isEmpty ? "after '('" : "between separators")")
                }
                cursor += 1
                lastSeparator = token
            }
        }
    }

    private func describe(_ token: Token) -> String {
        switch token.kind {
        case .word(let word): return "\"\(word)\""
        case .open: return "'('"
        case .close: return "')'"
        case .separator(let character): return "'\(character)'"
        }
    }

    /// `KIND:N` or `HOST:KIND:N`; `position` is the word's offset in the whole input.
    private func parseDevice(_ word: String, at position: Int) throws(DeviceGroupError) -> Device {
        let characters = Array(word)
        // Offsets of each ':'-separated field within the word.
        var fields: [(text: String, offset: Int)] = []
        var fieldStart = 0
        for (offset, character) in characters.enumerated() where character == ":" {
            fields.append((String(characters[fieldStart..<offset]), fieldStart))
            fieldStart = offset + 1
        }
        fields.append((String(characters[fieldStart...]), fieldStart))

        let kindList = Device.knownKindList
        switch fields.count {
        case 1:
            if Device.knownKinds.contains(word) {
                throw error("missing index after \"\(word)\"", at: position + characters.count,
                            expected: "\":N\" with N \(DeviceGroupParser.indexExpectation)")
            }
            throw error("\"\(word)\" is not a device", at: position,
                        expected: "\"KIND:N\" or \"HOST:KIND:N\" with KIND one of \(kindList), such as \"cpu:0\" or \"host1:cpu:3\"")
        case 2:
            let (first, second) = (fields[0], fields[1])
            if !Device.knownKinds.contains(first.text) && Device.knownKinds.contains(second.text) {
                // "host1:cpu": a host and a kind, but no index.
                try checkHost(first.text, at: position + first.offset)
                throw error("missing index after \"\(word)\"", at: position + characters.count,
                            expected: "\":N\" with N \(DeviceGroupParser.indexExpectation)")
            }
            let kind = try checkKind(first.text, at: position + first.offset, hostAllowed: true)
            let index = try parseIndex(second.text, at: position + second.offset, after: word)
            return Device(kind: kind, index: index)
        case 3:
            try checkHost(fields[0].text, at: position + fields[0].offset)
            let kind = try checkKind(fields[1].text, at: position + fields[1].offset, hostAllowed: false)
            let index = try parseIndex(fields[2].text, at: position + fields[2].offset, after: word)
            return Device(host: fields[0].text, kind: kind, index: index)
        default:
            throw error("too many ':' in \"\(word)\"", at: position + fields[3].offset - 1,
                        expected: "a device of the form \"KIND:N\" or \"HOST:KIND:N\", such as \"host1:cpu:3\"")
        }
    }

    private func checkHost(_ host: String, at position: Int) throws(DeviceGroupError) {
        guard !host.isEmpty else {
            throw error("empty host name", at: position, expected: DeviceGroupParser.hostExpectation + " before the ':'")
        }
        if let bad = host.firstIndex(where: { !Device.isHostNameCharacter($0) }) {
            let offset = host.distance(from: host.startIndex, to: bad)
            throw error("bad host name \"\(host)\" (character '\(host[bad])')", at: position + offset,
                        expected: DeviceGroupParser.hostExpectation)
        }
    }

    private func checkKind(_ kind: String, at position: Int, hostAllowed: Bool) throws(DeviceGroupError) -> String {
        guard !kind.isEmpty else {
            throw error("missing device kind", at: position, expected: "one of \(Device.knownKindList) before the ':'")
        }
        guard Device.knownKinds.contains(kind) else {
            let hint = hostAllowed ? " (a host name needs the full form \"\(kind):cpu:N\")" : ""
            throw error("unknown device kind \"\(kind)\"", at: position, expected: "one of \(Device.knownKindList)\(hint)")
        }
        return kind
    }

    private func parseIndex(_ text: String, at position: Int, after word: String) throws(DeviceGroupError) -> Int {
        let digits = Set("0123456789")
        guard !text.isEmpty else {
            throw error("missing index in \"\(word)\"", at: position, expected: DeviceGroupParser.indexExpectation)
        }
        if text.first == "-", text.count > 1, text.dropFirst().allSatisfy(digits.contains) {
            throw error("negative index \"\(text)\"", at: position, expected: DeviceGroupParser.indexExpectation)
        }
        guard text.allSatisfy(digits.contains) else {
            throw error("non-numeric index \"\(text)\"", at: position, expected: DeviceGroupParser.indexExpectation)
        }
        guard let index = Int(text) else {
            throw error("index \"\(text)\" is too large", at: position, expected: "an index below \(Int.max)")
        }
        return index
    }
}
