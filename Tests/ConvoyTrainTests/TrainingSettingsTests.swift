import ConvoyTensor
import ConvoyTrain
import Foundation
import Testing

@Suite struct TrainingSettingsTests {
    func message(_ body: () throws -> Void) -> String? {
        do { try body(); return nil } catch { return "\(error)" }
    }

    @Test func tomlSetsKeysAndFlagsOverrideThem() throws {
        var configuration = TrainingConfiguration()
        try TrainingSettings.apply(toml: """
            [model]
            layers = 2
            d_model = 64
            heads = 2
            [training]
            lr = 0.01
            steps = 50
            batch = 16
            optimizer = "sgd"
            """, source: "test.toml", to: &configuration)
        #expect(configuration.layers == 2 && configuration.dModel == 64 && configuration.heads == 2)
        #expect(configuration.learningRate == 0.01 && configuration.steps == 50 && configuration.optimizer == "sgd")
        try TrainingSettings.applyFlag("--lr", "3e-4", to: &configuration)
        try TrainingSettings.applyFlag("--layers", "3", to: &configuration)
        try TrainingSettings.applyFlag("--threads", "1", to: &configuration)
        #expect(configuration.learningRate == 3e-4 && configuration.layers == 3 && configuration.threads == 1)
    }

    @Test func integersAreAcceptedWhereNumbersAreExpected() throws {
        var configuration = TrainingConfiguration()
        try TrainingSettings.apply(toml: "[training]\nlr = 1\n", source: "t.toml", to: &configuration)
        #expect(configuration.learningRate == 1)
    }

    @Test func unknownKeysAndSectionsAreErrorsNamingTheKey() {
        var configuration = TrainingConfiguration()
        let unknown = message { try TrainingSettings.apply(toml: "[training]\nlrr = 0.1\n", source: "run.toml", to: &configuration) }
        #expect(unknown?.contains("training.lrr") == true)
        #expect(unknown?.contains("run.toml") == true)
        let section = message { try TrainingSettings.apply(toml: "[trainin]\nlr = 0.1\n", source: "run.toml", to: &configuration) }
        #expect(section?.contains("trainin.lr") == true)
        let topLevel = message { try TrainingSettings.apply(toml: "lr = 0.1\n", source: "run.toml", to: &configuration) }
        #expect(topLevel?.contains("'lr'") == true)
        let syntax = message { try TrainingSettings.apply(toml: "[training\nlr = ", source: "run.toml", to: &configuration) }
        #expect(syntax?.contains("run.toml") == true && syntax?.contains("line") == true)
    }

    @Test func outOfRangeAndMistypedValuesAreErrorsNamingTheKey() {
        var configuration = TrainingConfiguration()
        let cases: [(String, String)] = [
            ("[training]\nsteps = 0\n", "training.steps"),
            ("[training]\nlr = -1.0\n", "training.lr"),
            ("[model]\ndropout = 1.0\n", "model.dropout"),
            ("[training]\noptimizer = \"lion\"\n", "training.optimizer"),
            ("[model]\nlayers = \"four\"\n", "model.layers"),
            ("[training]\nbatch = 2.5\n", "training.batch"),
            ("[data]\ndigits = 12\n", "data.digits"),
            ("[parallel]\nzero_stage = 4\n", "parallel.zero_stage"),
            ("[parallel.ddp]\nreshard_after_forward = 1\n", "parallel.ddp.reshard_after_forward"),
        ]
        for (toml, key) in cases {
            let text = message { try TrainingSettings.apply(toml: toml, source: "bad.toml", to: &configuration) }
            #expect(text?.contains(key) == true, "expected an error naming \(key) for \(toml), got \(text ?? "no error")")
        }
        let flag = message { try TrainingSettings.applyFlag("--lr", "fast", to: &configuration) }
        #expect(flag?.contains("--lr") == true)
    }

    @Test func relationsBetweenKeysAreValidated() {
        let headsText = message { _ = try TrainingSettings.resolve(configFile: nil, flags: [("--d-model", "100"), ("--heads", "3")]) }
        #expect(headsText?.contains("divisible") == true)
        let contextText = message { _ = try TrainingSettings.resolve(configFile: nil, flags: [("--context", "8")]) }
        #expect(contextText?.contains("--context") == true)
        let batchText = message { _ = try TrainingSettings.resolve(configFile: nil, flags: [("--batch", "10"), ("--accumulate-steps", "4")]) }
        #expect(batchText?.contains("accumulate_steps") == true)
        let missingConfig = message { _ = try TrainingSettings.resolve(configFile: "/nonexistent/run.toml", flags: []) }
        #expect(missingConfig?.contains("/nonexistent/run.toml") == true)
    }

    @Test func effectiveConfigurationRoundTrips() throws {
        var configuration = TrainingConfiguration()
        try TrainingSettings.applyFlag("--data", "/tmp/some \"file\".txt", to: &configuration)
        try TrainingSettings.applyFlag("--lr", "0.00125", to: &configuration)
        try TrainingSettings.applyFlag("--save", "/tmp/out", to: &configuration)
        try TrainingSettings.applyFlag("--seed", "99", to: &configuration)
        let text = TrainingSettings.tomlText(configuration)
        var reread = TrainingConfiguration()
        try TrainingSettings.apply(toml: text, source: "effective", to: &reread)
        #expect(reread == configuration)
    }
}
