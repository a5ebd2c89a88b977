import ConvoyNN
import ConvoyTrain
import Foundation
import Testing

/// Runs the built `convoy` executable (it sits beside the test bundle in the build directory).
func runConvoy(_ arguments: [String]) throws -> (status: Int32, output: String, error: String) {
    let directory = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
    let executable = directory.appendingPathComponent("convoy")
    try #require(FileManager.default.isExecutableFile(atPath: executable.path), "build the convoy product first (swift build --build-tests builds it)")
    let process = Process()
    process.executableURL = executable
    process.arguments = arguments
    process.environment = ["CONVOY_THREADS": "1", "PATH": "/usr/bin:/bin"]
    let out = Pipe(), err = Pipe()
    process.standardOutput = out
    process.standardError = err
    try process.run()
    let outputData = out.fileHandleForReading.readDataToEndOfFile()
    let errorData = err.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return (process.terminationStatus, String(decoding: outputData, as: UTF8.self), String(decoding: errorData, as: UTF8.self))
}

@Suite(.serialized) struct CommandLineTests {
    /// Errors a person can make end in one clear line and a non-zero status: no stack trace, no crash.
    func expectCleanFailure(_ arguments: [String], mentioning words: String) throws {
        let result = try runConvoy(arguments)
        #expect(result.status == 1, "convoy \(arguments.joined(separator: " ")) exited with \(result.status)")
        let lines = result.error.split(separator: "\n")
        #expect(lines.count == 1, "expected one line, got: \(result.error)")
        #expect(result.error.hasPrefix("error: "))
        #expect(result.error.contains(words), "'\(result.error)' should mention '\(words)'")
        #expect(!result.error.contains("Fatal error") && !result.error.contains("Backtrace"))
    }

    @Test func userErrorsPrintOneLineAndExitNonZero() throws {
        let scratch = scratchDirectory("cli")
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        try expectCleanFailure(["train", "--data", "/nonexistent/corpus.txt", "--output", scratch], mentioning: "/nonexistent/corpus.txt")
        try expectCleanFailure(["train", "--d-model", "100", "--heads", "3", "--output", scratch], mentioning: "divisible")
        try expectCleanFailure(["train", "--resume", scratch + "/missing", "--output", scratch], mentioning: "does not exist")
        try expectCleanFailure(["eval", "--checkpoint", scratch + "/missing", "--task", "arithmetic"], mentioning: "does not exist")
        try expectCleanFailure(["generate", "--checkpoint", scratch + "/missing", "--prompt", "1+1="], mentioning: "does not exist")

        // A real checkpoint with 16 positions: asking for a longer context is refused.
        let model = try GPT(GPTConfiguration(vocabularySize: 256, contextLength: 16, layers: 1, heads: 2, width: 16), seed: 1)
        try GPTCheckpoint.save(model, to: scratch + "/tiny")
        try Data(repeating: 65, count: 200).write(to: URL(fileURLWithPath: scratch + "/text.txt"))
        let tooLong = try runConvoy(["eval", "--checkpoint", scratch + "/tiny", "--data", scratch + "/text.txt", "--context", "64"])
        #expect(tooLong.status != 0)
        #expect(tooLong.error.contains("context"))
        #expect(!tooLong.error.contains("Backtrace"))
    }

    @Test func evalAndGenerateWorkOnASavedCheckpoint() throws {
        let scratch = scratchDirectory("cli-ok")
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let model = try GPT(GPTConfiguration(vocabularySize: 256, contextLength: 16, layers: 1, heads: 2, width: 16), seed: 1)
        try GPTCheckpoint.save(model, to: scratch + "/tiny")
        try Data((0..<200).map { UInt8($0 % 26 + 65) }).write(to: URL(fileURLWithPath: scratch + "/text.txt"))
        let eval = try runConvoy(["eval", "--checkpoint", scratch + "/tiny", "--data", scratch + "/text.txt", "--context", "16", "--json"])
        #expect(eval.status == 0)
        let object = try JSONSerialization.jsonObject(with: Data(eval.output.utf8)) as? [String: Any]
        #expect((object?["tokens"] as? NSNumber)?.intValue == (199 / 16) * 16)
        let loss = (object?["loss"] as? NSNumber)?.doubleValue ?? 0
        #expect(loss > 4 && loss < 7, "an untrained byte model's loss is near ln 256 ≈ 5.5, got \(loss)")

        let generated = try runConvoy(["generate", "--checkpoint", scratch + "/tiny", "--prompt", "AB", "--max-tokens", "5"])
        #expect(generated.status == 0)
        #expect(generated.output.hasPrefix("AB"))
        let again = try runConvoy(["generate", "--checkpoint", scratch + "/tiny", "--prompt", "AB", "--max-tokens", "5"])
        #expect(again.output == generated.output)
    }
}
