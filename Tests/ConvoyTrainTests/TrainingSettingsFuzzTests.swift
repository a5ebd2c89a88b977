import ConvoyTensor
import ConvoyTrain
import Foundation
import Testing

/// Property test of TOML settings: random mixes of known and unknown keys with values of every type (in
/// range, out of range, huge, negative, wrong type, malformed TOML) are either applied or refused with a
/// ``ConvoyError`` — never a crash — and whatever is applied and validates survives a round trip through the
/// effective configuration text. Seeded and bounded.
@Suite struct TrainingSettingsFuzzTests {
    /// A seeded stream: Convoy's own mixing function over a counter.
    struct Generator: RandomNumberGenerator {
        var state: UInt64
        mutating func next() -> UInt64 { state &+= 1; return PhiloxRandom.mix(state) }
    }

    static let values = ["0", "1", "-1", "2", "3", "8", "16", "64", "100000000000", "9223372036854775807", "-9223372036854775808",
                         "0.5", "1e-3", "-0.0", "1e308", "inf", "nan", "-inf", "true", "false", "\"\"", "\"text\"", "\"arithmetic\"",
                         "\"cosine\"", "\"adamw\"", "\"1f1b\"", "\"auto\"", "\"on\"", "\"3,3\"", "[2, 2]", "[]", "[1, \"a\"]", "[-1]",
                         "{ a = 1 }", "1979-05-27", "\"gpt\"", "\"hybrid\"", "\"/dev/null\"", "\"\\u0000\"", "= =", "\"unterminated"]

    @Test func randomSettingsNeverCrash() throws {
        let known = TrainingSettings.all.map(\.key) + ["model.unknown", "nosection", "parallel.ddp.unknown", "training.lr.deep"]
        var random = Generator(state: 41)
        var applied = 0
        for _ in 0..<1500 {
            var sections: [String: [String]] = [:]
            for _ in 0..<Int.random(in: 1...6, using: &random) {
                let key = known.randomElement(using: &random)!
                let dot = key.lastIndex(of: ".") ?? key.startIndex
                let section = dot == key.startIndex ? "" : String(key[..<dot])
                let name = dot == key.startIndex ? key : String(key[key.index(after: dot)...])
                sections[section, default: []].append("\(name) = \(Self.values.randomElement(using: &random)!)")
            }
            let text = sections.sorted { $0.key < $1.key }.map { ($0.key.isEmpty ? "" : "[\($0.key)]\n") + $0.value.joined(separator: "\n") }.joined(separator: "\n")
            var configuration = TrainingConfiguration()
            do {
                try TrainingSettings.apply(toml: text, source: "fuzz.toml", to: &configuration)
                try configuration.validate()
                applied += 1
                var reread = TrainingConfiguration()
                try TrainingSettings.apply(toml: TrainingSettings.tomlText(configuration), source: "effective", to: &reread)
                #expect(reread == configuration, "round trip of:\n\(text)")
            } catch is ConvoyError {
            } catch {
                Issue.record("\(type(of: error)) instead of a ConvoyError for:\n\(text)\n\(error)")
            }
        }
        // The generator must reach the accepting paths too, or the property says little.
        #expect(applied > 25, "only \(applied) of 1500 random configurations were valid")
    }
}
