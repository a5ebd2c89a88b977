import ConvoyComm
import Testing

@Suite("DeviceGroup parsing")
struct DeviceGroupTests {
    struct ValidCase: Sendable, CustomTestStringConvertible {
        let text: String
        let entries: [[Device]]
        let canonical: String
        var testDescription: String { "\(text.debugDescription) parses" }
    }

    static let validCases: [ValidCase] = [
        ValidCase(text: "cpu:0", entries: [[.cpu(0)]], canonical: "cpu:0"),
        ValidCase(text: "host1:cpu:3", entries: [[.cpu(3, host: "host1")]], canonical: "host1:cpu:3"),
        ValidCase(text: "gpu:2", entries: [[Device(kind: "gpu", index: 2)]], canonical: "gpu:2"),
        ValidCase(text: "cpu:0,cpu:1", entries: [[.cpu(0)], [.cpu(1)]], canonical: "cpu:0,cpu:1"),
        ValidCase(text: "cpu:0; cpu:1 cpu:2", entries: [[.cpu(0)], [.cpu(1)], [.cpu(2)]], canonical: "cpu:0,cpu:1,cpu:2"),
        ValidCase(text: "(cpu:0,cpu:1),(cpu:2,cpu:3)", entries: [[.cpu(0), .cpu(1)], [.cpu(2), .cpu(3)]],
                  canonical: "(cpu:0,cpu:1),(cpu:2,cpu:3)"),
        ValidCase(text: " ( cpu:0 ; cpu:1 )\tcpu:2 ", entries: [[.cpu(0), .cpu(1)], [.cpu(2)]], canonical: "(cpu:0,cpu:1),cpu:2"),
        ValidCase(text: "(cpu:0 cpu:1) , (host1:cpu:0;host1:cpu:1)",
                  entries: [[.cpu(0), .cpu(1)], [.cpu(0, host: "host1"), .cpu(1, host: "host1")]],
                  canonical: "(cpu:0,cpu:1),(host1:cpu:0,host1:cpu:1)"),
        ValidCase(text: "cpu:0\ncpu:1", entries: [[.cpu(0)], [.cpu(1)]], canonical: "cpu:0,cpu:1"),
        ValidCase(text: "node-2.rack_a:cpu:10", entries: [[.cpu(10, host: "node-2.rack_a")]], canonical: "node-2.rack_a:cpu:10"),
        // The same kind and index on different hosts are different devices.
        ValidCase(text: "host1:cpu:0,host2:cpu:0,cpu:0", entries: [[.cpu(0, host: "host1")], [.cpu(0, host: "host2")], [.cpu(0)]],
                  canonical: "host1:cpu:0,host2:cpu:0,cpu:0"),
        ValidCase(text: "(cpu:5)", entries: [[.cpu(5)]], canonical: "cpu:5"),
        ValidCase(text: "cpu:007", entries: [[.cpu(7)]], canonical: "cpu:7"),
        ValidCase(text: "cpu:1,(gpu:0,gpu:1)", entries: [[.cpu(1)], [Device(kind: "gpu", index: 0), Device(kind: "gpu", index: 1)]],
                  canonical: "cpu:1,(gpu:0,gpu:1)"),
    ]

    @Test(arguments: validCases)
    func parsesValidForms(_ valid: ValidCase) throws {
        let group = try DeviceGroup(parsing: valid.text)
        #expect(group.entries == valid.entries)
        #expect(group.devices == valid.entries.flatMap { $0 })
        #expect(group.isModelParallel == valid.entries.contains { $0.count > 1 })
        #expect(group.description == valid.canonical)
    }

    @Test(arguments: validCases)
    func descriptionRoundTrips(_ valid: ValidCase) throws {
        let group = try DeviceGroup(parsing: valid.text)
        let reparsed = try DeviceGroup(parsing: group.description)
        #expect(reparsed == group)
        #expect(reparsed.description == group.description)
    }

    @Test func deviceFields() throws {
        let device = try #require(try DeviceGroup(parsing: "host1:cpu:3").devices.first)
        #expect(device.host == "host1")
        #expect(device.kind == "cpu")
        #expect(device.index == 3)
        #expect(device.description == "host1:cpu:3")
        let local = try #require(try DeviceGroup(parsing: "gpu:12").devices.first)
        #expect(local.host == nil)
        #expect(local.kind == "gpu")
        #expect(local.index == 12)
    }

    @Test func modelParallelFlag() throws {
        #expect(try DeviceGroup(parsing: "cpu:0,cpu:1").isModelParallel == false)
        #expect(try DeviceGroup(parsing: "(cpu:0,cpu:1)").isModelParallel == true)
        #expect(try DeviceGroup(parsing: "cpu:2,(cpu:0,cpu:1)").isModelParallel == true)
        #expect(try DeviceGroup(parsing: "(cpu:0),(cpu:1)").isModelParallel == false)
    }

    @Test func groupsBuiltInCodeMatchParsedOnes() throws {
        let built = DeviceGroup([[.cpu(0), .cpu(1)], [.cpu(2, host: "h")]])
        #expect(built == (try DeviceGroup(parsing: "(cpu:0, cpu:1) h:cpu:2")))
        #expect(built.description == "(cpu:0,cpu:1),h:cpu:2")
    }

    struct MalformedCase: Sendable, CustomTestStringConvertible {
        let text: String
        let position: Int
        /// A fragment the problem must contain.
        let problem: String
        /// A fragment the expectation must contain.
        let expected: String
        var testDescription: String { "\(text.debugDescription) is rejected" }
    }

    static let malformedCases: [MalformedCase] = [
        MalformedCase(text: "", position: 0, problem: "empty string", expected: "at least one device"),
        MalformedCase(text: "   ", position: 0, problem: "no devices", expected: "at least one device"),
        MalformedCase(text: "cpu:0,,cpu:1", position: 6, problem: "empty entry", expected: "between separators"),
        MalformedCase(text: "cpu:0, ;cpu:1", position: 7, problem: "empty entry", expected: "\"cpu:0\""),
        MalformedCase(text: ",cpu:0", position: 0, problem: "empty entry", expected: "before the first separator"),
        MalformedCase(text: "cpu:0,", position: 5, problem: "trailing separator ','", expected: "another device after it"),
        MalformedCase(text: "cpu:0 ; ", position: 6, problem: "trailing separator ';'", expected: "another device after it"),
        MalformedCase(text: "(cpu:0,cpu:1", position: 0, problem: "unclosed '('", expected: "')'"),
        MalformedCase(text: "cpu:0,(cpu:1", position: 6, problem: "unclosed '('", expected: "')'"),
        MalformedCase(text: "cpu:0)", position: 5, problem: "unmatched ')'", expected: "'('"),
        MalformedCase(text: ")", position: 0, problem: "unmatched ')'", expected: "'('"),
        MalformedCase(text: "((cpu:0,cpu:1))", position: 1, problem: "nested '('", expected: "not other tuples"),
        MalformedCase(text: "(cpu:0,(cpu:1))", position: 7, problem: "nested '('", expected: "not other tuples"),
        MalformedCase(text: "()", position: 0, problem: "empty tuple", expected: "at least one device inside"),
        MalformedCase(text: "cpu:0,( )", position: 6, problem: "empty tuple", expected: "at least one device inside"),
        MalformedCase(text: "(cpu:0,)", position: 6, problem: "trailing separator ',' inside a tuple", expected: "')'"),
        MalformedCase(text: "(,cpu:0)", position: 1, problem: "empty entry", expected: "after '('"),
        MalformedCase(text: "(cpu:0,,cpu:1)", position: 7, problem: "empty entry", expected: "between separators"),
        MalformedCase(text: "(cpu:0)cpu:1", position: 7, problem: "missing separator before \"cpu:1\"", expected: "',', ';' or whitespace"),
        MalformedCase(text: "(cpu:0)(cpu:1)", position: 7, problem: "missing separator before '('", expected: "',', ';' or whitespace"),
        MalformedCase(text: "cpu:0(cpu:1)", position: 5, problem: "missing separator", expected: "',', ';' or whitespace"),
        MalformedCase(text: "cpu", position: 3, problem: "missing index after \"cpu\"", expected: "non-negative integer"),
        MalformedCase(text: "cpu:", position: 4, problem: "missing index", expected: "non-negative integer"),
        MalformedCase(text: "cpu:0,host1:cpu", position: 15, problem: "missing index after \"host1:cpu\"", expected: "non-negative integer"),
        MalformedCase(text: "host1:cpu:", position: 10, problem: "missing index", expected: "non-negative integer"),
        MalformedCase(text: "cpu:-1", position: 4, problem: "negative index \"-1\"", expected: "non-negative integer"),
        MalformedCase(text: "cpu:0,cpu:x", position: 10, problem: "non-numeric index \"x\"", expected: "non-negative integer"),
        MalformedCase(text: "cpu:1.5", position: 4, problem: "non-numeric index \"1.5\"", expected: "non-negative integer"),
        MalformedCase(text: "cpu:+1", position: 4, problem: "non-numeric index", expected: "non-negative integer"),
        MalformedCase(text: "cpu:99999999999999999999", position: 4, problem: "too large", expected: "an index below"),
        MalformedCase(text: "tpu:0", position: 0, problem: "unknown device kind \"tpu\"", expected: "one of \"cpu\", \"gpu\""),
        MalformedCase(text: "CPU:0", position: 0, problem: "unknown device kind \"CPU\"", expected: "one of \"cpu\", \"gpu\""),
        MalformedCase(text: "host1:tpu:0", position: 6, problem: "unknown device kind \"tpu\"", expected: "one of \"cpu\", \"gpu\""),
        MalformedCase(text: "host1:3", position: 0, problem: "unknown device kind \"host1\"", expected: "\"host1:cpu:N\""),
        MalformedCase(text: ":0", position: 0, problem: "missing device kind", expected: "one of \"cpu\", \"gpu\""),
        MalformedCase(text: "bad!host:cpu:0", position: 3, problem: "bad host name \"bad!host\" (character '!')", expected: "letters, digits"),
        MalformedCase(text: "cpu:0 hôst:cpu:1", position: 7, problem: "bad host name", expected: "letters, digits"),
        MalformedCase(text: ":cpu:0", position: 0, problem: "empty host name", expected: "letters, digits"),
        MalformedCase(text: "a:b:cpu:0", position: 7, problem: "too many ':'", expected: "\"HOST:KIND:N\""),
        MalformedCase(text: "0", position: 0, problem: "\"0\" is not a device", expected: "\"KIND:N\" or \"HOST:KIND:N\""),
        MalformedCase(text: "cpu:0,cpu:0", position: 6, problem: "duplicate device \"cpu:0\" (first at position 0)", expected: "at most once"),
        MalformedCase(text: "(cpu:0,cpu:1),(cpu:1,cpu:2)", position: 15, problem: "duplicate device \"cpu:1\" (first at position 7)", expected: "at most once"),
        MalformedCase(text: "h:cpu:0 (h:cpu:0)", position: 9, problem: "duplicate device \"h:cpu:0\"", expected: "at most once"),
    ]

    @Test(arguments: malformedCases)
    func rejectsMalformedStrings(_ malformed: MalformedCase) {
        let error = #expect(throws: DeviceGroupError.self) { try DeviceGroup(parsing: malformed.text) }
        guard let error else { return }
        #expect(error.input == malformed.text)
        #expect(error.position == malformed.position)
        #expect(error.problem.contains(malformed.problem), "problem was: \(error.problem)")
        #expect(error.expected.contains(malformed.expected), "expected was: \(error.expected)")
        // The message quotes the whole input, points at the position and says what was expected.
        let message = error.description
        #expect(message.hasPrefix("device group \"\(malformed.text)\": "), "message was: \(message)")
        #expect(message.contains("\(malformed.problem)"))
        #expect(message.contains(" at position \(malformed.position); expected "))
        #expect(message.hasSuffix(error.expected))
    }

    @Test func messageMatchesTheDocumentedExample() {
        let error = #expect(throws: DeviceGroupError.self) { try DeviceGroup(parsing: "cpu:0,,cpu:1") }
        #expect(error?.description == "device group \"cpu:0,,cpu:1\": empty entry at position 6; expected a device such as \"cpu:0\" or \"host1:cpu:3\" between separators")
    }

    @Test func messageEscapesControlCharactersSoItStaysOnOneLine() {
        let error = #expect(throws: DeviceGroupError.self) { try DeviceGroup(parsing: "cpu:0\t\"x\",\n") }
        #expect(error?.input == "cpu:0\t\"x\",\n")
        #expect(error?.description.hasPrefix(#"device group "cpu:0\t\"x\",\n": "#) == true)
        #expect(error?.description.contains("\n") == false)
    }
}
