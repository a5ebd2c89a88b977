import ConvoyTrain
import Foundation
import Testing

/// `convoy tokenize` and `convoy bench tokenize`, run as the built executable.
@Suite(.serialized) struct TokenizeCommandTests {
    /// Runs `convoy` with `input` on standard input.
    func run(_ arguments: [String], input: [UInt8]) throws -> (status: Int32, output: [UInt8], error: String) {
        let executable = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("convoy")
        try #require(FileManager.default.isExecutableFile(atPath: executable.path), "build the convoy product first (swift build --build-tests builds it)")
        let process = Process()
        process.executableURL = executable
        process.arguments = arguments
        process.environment = ["CONVOY_THREADS": "2", "PATH": "/usr/bin:/bin"]
        let stdin = Pipe(), stdout = Pipe(), stderr = Pipe()
        process.standardInput = stdin
        process.standardOutput = stdout
        process.standardError = stderr
        try process.run()
        // Write from another thread so a large output cannot fill its pipe while we are still writing.
        let writer = Thread {
            stdin.fileHandleForWriting.write(Data(input))
            try? stdin.fileHandleForWriting.close()
        }
        writer.start()
        let output = stdout.fileHandleForReading.readDataToEndOfFile()
        let error = stderr.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return (process.terminationStatus, [UInt8](output), String(decoding: error, as: UTF8.self))
    }

    @Test func tokenizePrintsTheIDsOfTokenizersAndDecodeGivesTheBytesBack() throws {
        let tokenizer = TokenizerTests.fixtureDirectory
        let cases = TokenizerTests.fixture.cases.filter { !$0.bytes.isEmpty }.prefix(20)
        for testCase in cases {
            let plain = try run(["tokenize", "--tokenizer", tokenizer], input: testCase.bytes)
            #expect(plain.status == 0, "\(plain.error)")
            #expect(String(decoding: plain.output, as: UTF8.self) == testCase.ids.map(String.init).joined(separator: " ") + "\n")
            let json = try run(["tokenize", "--tokenizer", tokenizer, "--json"], input: testCase.bytes)
            #expect(String(decoding: json.output, as: UTF8.self) == "[" + testCase.ids.map(String.init).joined(separator: ",") + "]\n")
            let decoded = try run(["tokenize", "--tokenizer", tokenizer, "--decode"], input: json.output)
            #expect(decoded.status == 0 && decoded.output == testCase.bytes, "\(decoded.error)")
        }
        let bytes = try run(["tokenize", "--tokenizer", "bytes", "--decode"], input: Array("104 105\n255".utf8))
        #expect(bytes.output == [104, 105, 255])
    }

    @Test func badIDsAreOneLineErrors() throws {
        let tokenizer = TokenizerTests.fixtureDirectory
        var result = try run(["tokenize", "--tokenizer", tokenizer, "--decode"], input: Array("1 2 x".utf8))
        #expect(result.status == 1 && result.error.contains("'x' after 2 ids"), "\(result.error)")
        result = try run(["tokenize", "--tokenizer", tokenizer, "--decode"], input: Array("1 999999".utf8))
        #expect(result.status == 1 && result.error.contains("id 999999") && result.error.contains("vocabulary of 757"), "\(result.error)")
        result = try run(["tokenize", "--tokenizer", "/nonexistent/tokenizer.json"], input: [])
        #expect(result.status == 1 && result.error.contains("/nonexistent/tokenizer.json does not exist"), "\(result.error)")
        #expect(result.error.split(separator: "\n").count == 1)
    }

    @Test func benchTokenizeChecksParallelIDsAndReportsJSON() throws {
        let directory = scratchDirectory("bench-tokenize")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        var text: [UInt8] = []
        for testCase in TokenizerTests.fixture.cases { text += testCase.bytes }
        let input = directory + "/input.txt"
        try Data(text).write(to: URL(fileURLWithPath: input))
        let result = try run(["bench", "tokenize", "--tokenizer", TokenizerTests.fixtureDirectory, "--input", input, "--threads", "2",
                              "--chunk-bytes", "2000", "--repetitions", "1", "--json"], input: [])
        #expect(result.status == 0, "\(result.error)")
        let lastLine = String(decoding: result.output, as: UTF8.self).split(separator: "\n").last.map(String.init) ?? ""
        let object = try #require(try JSONSerialization.jsonObject(with: Data(lastLine.utf8)) as? [String: Any])
        #expect(object["parallel_ids_identical"] as? Bool == true)
        #expect((object["bytes"] as? Int) == text.count)
        #expect((object["chunks"] as? Int ?? 0) > 5)
        #expect((object["single_thread_bytes_per_second"] as? Double ?? 0) > 0)
    }
}
