import ConvoyTensor
import ConvoyTrain
import Foundation
import Testing

/// The settings table generates the flag parser, `--help` and the TOML reader: every setting must survive
/// flag → configuration → TOML text → configuration, and bad input must give errors, never a crash.
@Suite struct SettingsTableTests {
    /// A valid value for `setting` that differs from its default where possible, as flag text.
    func sample(for setting: TrainingSettings.Setting) -> String {
        // Settings whose values have a shape beyond their type: one row count for all 26 CTR tables, a staleness.
        switch setting.key {
        case "data.ctr_vocabulary": return "5000"
        case "parallel.ps.staleness": return "inf"
        default: break
        }
        switch setting.type {
        case .integer(let range): return String(range.upperBound == Int.max ? 4242 : range.upperBound)
        case .number(let range, let upperExclusive): return String(upperExclusive ? (range.lowerBound + range.upperBound) / 2 : range.upperBound)
        case .choice(let options): return options.last!
        case .path: return "/tmp/convoy \"settings\" \\ test/\(setting.key)"
        case .boolean: return "false"
        case .integerList: return "2,1,3"
        // The free-text settings: the mesh order (another valid order than the default) and the loss scale.
        case .text: return setting.key == "training.loss_scale" ? "dynamic" : "pp-dp-tp"
        }
    }

    @Test func everySettingRoundTripsFromFlagThroughTOML() throws {
        let settings = TrainingSettings.all
        #expect(Set(settings.map(\.key)).count == settings.count, "a TOML key is declared twice")
        #expect(Set(settings.map(\.flag)).count == settings.count, "a flag is declared twice")
        for setting in settings {
            #expect(!setting.help.isEmpty, "\(setting.key) has no help")
            var text = sample(for: setting)
            if setting.type == .boolean {
                // Whichever of true and false is not the default.
                var probe = TrainingConfiguration()
                try TrainingSettings.applyFlag(setting.flag, text, to: &probe)
                if probe == TrainingConfiguration() { text = "true" }
            }
            for arguments in [[setting.flag, text], ["\(setting.flag)=\(text)"]] {
                var fromFlag = TrainingConfiguration()
                for (flag, value) in try TrainingSettings.parseFlags(arguments) { try TrainingSettings.applyFlag(flag, value, to: &fromFlag) }
                #expect(fromFlag != TrainingConfiguration(), "\(arguments) changed nothing")
                var reread = TrainingConfiguration()
                try TrainingSettings.apply(toml: TrainingSettings.tomlText(fromFlag), source: "effective.toml", to: &reread)
                #expect(reread == fromFlag, "\(setting.key) did not survive the TOML round trip")
            }
        }
    }

    @Test func helpListsEveryFlagWithItsTypeKeyAndHelp() {
        let help = TrainingSettings.flagHelp
        for setting in TrainingSettings.all {
            #expect(help.contains("  \(setting.flag) \(setting.type)\n") && help.contains("[\(setting.key)]"), "help lacks \(setting.flag)")
            #expect(help.contains(setting.help.split(separator: " ").prefix(3).joined(separator: " ")), "help lacks the text of \(setting.flag)")
        }
        #expect(help.contains("--steps <integer 1...100000000>"))
        #expect(help.contains("--fuse-optimizer <auto|on|off>"))
    }

    /// What a person sees: the built `convoy train --help` shows every setting, and a bad flag ends in one line.
    @Test func commandLineHelpAndErrorsComeFromTheTable() throws {
        let help = try runConvoy(["train", "--help"])
        #expect(help.status == 0)
        for setting in TrainingSettings.all {
            #expect(help.output.contains("  \(setting.flag) \(setting.type)\n") && help.output.contains("[\(setting.key)]"), "convoy train --help lacks \(setting.flag)")
        }
        let negative = try runConvoy(["train", "--steps", "-5"])
        #expect(negative.status == 1)
        #expect(negative.error == "error: invalid configuration: --steps: -5 is out of range; use a value in 1...100000000\n")
        let typo = try runConvoy(["train", "--bucket-cap", "4"])
        #expect(typo.error == "error: invalid configuration: unknown flag --bucket-cap; did you mean --bucket-cap-mb?\n")
    }

    func message(_ body: () throws -> Void) -> String? {
        do { try body(); return nil } catch { return "\(error)" }
    }

    @Test func badFlagsGiveErrorsThatSayWhatToChange() {
        func resolve(_ arguments: [String]) -> String? {
            message { _ = try TrainingSettings.resolve(configFile: nil, flags: try TrainingSettings.parseFlags(arguments, otherFlags: ["--config"])) }
        }
        #expect(resolve(["--steps", "-5"]) == "invalid configuration: --steps: -5 is out of range; use a value in 1...100000000")
        #expect(resolve(["--steps=-5"]) == "invalid configuration: --steps: -5 is out of range; use a value in 1...100000000")
        #expect(resolve(["--step", "5"]) == "invalid configuration: unknown flag --step; did you mean --steps?")
        #expect(resolve(["--confg", "x.toml"]) == "invalid configuration: unknown flag --confg; did you mean --config?")
        #expect(resolve(["--zzzzzzzz", "1"])?.contains("unknown flag --zzzzzzzz; run convoy train --help") == true)
        #expect(resolve(["--lr"]) == "invalid configuration: --lr needs a value: <number 0...10>")
        #expect(resolve(["--lr", "fast"]) == "invalid configuration: --lr: expected a number, got 'fast'")
        #expect(resolve(["12"])?.contains("unexpected argument '12'") == true)
        #expect(resolve(["--dropout", "1"])?.contains("--dropout: 1.0 is out of range") == true)
        #expect(resolve(["--optimizer", "lion"])?.contains("--optimizer: \"lion\" is not one of") == true)
        #expect(message { var configuration = TrainingConfiguration(); try TrainingSettings.apply("training.stepz", .integer(1), to: &configuration) }?
            .contains("did you mean 'training.steps'?") == true)
    }

    @Test func laterFlagsOverrideEarlierOnesAndValuesMayStartWithADash() throws {
        let flags = try TrainingSettings.parseFlags(["--lr", "0.5", "--output", "-odd-dir", "--lr=0.25"])
        let configuration = try TrainingSettings.resolve(configFile: nil, flags: flags)
        #expect(configuration.learningRate == 0.25)
        #expect(configuration.output == "-odd-dir")
    }

    /// Random mixes of known and unknown flags, keys and values (seeded, so a failure reproduces): parsing,
    /// applying and validating either succeed or throw a ConvoyError — never trap.
    @Test func randomFlagAndTOMLMixesNeverCrash() {
        var generator = SplitMix(seed: 12)
        let settings = TrainingSettings.all
        let values = ["0", "1", "-1", "-5", "3", "1e9", "-0.5", "0.5", "nan", "inf", "true", "off", "maybe", "", "=", "--", "a,b", "2,2",
                      "1,0", "auto", "gpipe", "mpi", "text", "\"", "[1, 2]", "9223372036854775807", "99999999999999999999", "/tmp/x"]
        var outcomes = (accepted: 0, refused: 0)
        for _ in 0..<400 {
            var arguments: [String] = []
            for _ in 0..<Int.random(in: 0...6, using: &generator) {
                let flag = Bool.random(using: &generator) ? settings.randomElement(using: &generator)!.flag : ["--", "-x", "--lrr", "--steps=", "---"].randomElement(using: &generator)!
                let value = values.randomElement(using: &generator)!
                switch Int.random(in: 0..<3, using: &generator) {
                case 0: arguments += [flag, value]
                case 1: arguments.append("\(flag)=\(value)")
                default: arguments.append(flag)
                }
            }
            var toml = ""
            for _ in 0..<Int.random(in: 0...4, using: &generator) {
                let key = settings.randomElement(using: &generator)!.key
                let dot = key.lastIndex(of: ".")!
                let literal = ["1", "-3", "0.5", "true", "\"x\"", "[1, 2]", "[\"a\"]", "1e400", "nan"].randomElement(using: &generator)!
                toml += "[\(key[..<dot])]\n\(key[key.index(after: dot)...]) = \(literal)\n"
            }
            do {
                var configuration = TrainingConfiguration()
                try TrainingSettings.apply(toml: toml, source: "random.toml", to: &configuration)
                for (flag, value) in try TrainingSettings.parseFlags(arguments) { try TrainingSettings.applyFlag(flag, value, to: &configuration) }
                try configuration.validate()
                outcomes.accepted += 1
            } catch is ConvoyError {
                outcomes.refused += 1
            } catch {
                Issue.record("\(arguments) / \(toml) threw a \(type(of: error)), not a ConvoyError: \(error)")
            }
        }
        #expect(outcomes.accepted > 0 && outcomes.refused > 0, "the mix should exercise both outcomes: \(outcomes)")
    }
}

/// A small seeded generator (SplitMix64), so the property test is the same on every run.
struct SplitMix: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE5_E4B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
