import ConvoyTensor
import ConvoyTrain
import Foundation
import Testing

/// Writes `bytes` to a fresh temporary file, runs `body` with its path, and removes the file afterwards.
private func withTemporaryFile<Result>(_ bytes: [UInt8], _ body: (String) throws -> Result) throws -> Result {
    let url = FileManager.default.temporaryDirectory.appendingPathComponent("convoy-text-\(UUID().uuidString).txt")
    try Data(bytes).write(to: url)
    defer { try? FileManager.default.removeItem(at: url) }
    return try body(url.path)
}

/// 900 training bytes of lowercase letters followed by 100 validation bytes of digits, so any byte shows
/// which part it came from.
private let lettersThenDigits: [UInt8] = {
    let letters: [UInt8] = (0..<900).map { (position: Int) -> UInt8 in
        let letter: Int = (position * 7 + position / 26) % 26
        return UInt8(ascii: "a") + UInt8(letter)
    }
    let digits: [UInt8] = (0..<100).map { (position: Int) -> UInt8 in
        let digit: Int = (position * 3 + position / 10) % 10
        return UInt8(ascii: "0") + UInt8(digit)
    }
    return letters + digits
}()

private func isLetter(_ token: Int32) -> Bool { (Int32(UInt8(ascii: "a"))...Int32(UInt8(ascii: "z"))).contains(token) }
private func isDigit(_ token: Int32) -> Bool { (Int32(UInt8(ascii: "0"))...Int32(UInt8(ascii: "9"))).contains(token) }

private func message(of error: ConvoyError?) -> String { error.map { "\($0)" } ?? "" }

@Suite struct ByteTokenizerTests {
    @Test func roundTripsASCII() {
        let tokenizer = ByteTokenizer()
        let text = "47+385=432\nHello, world!\t~"
        let tokens = tokenizer.encode(text)
        #expect(tokens.count == text.utf8.count)
        #expect(tokens.prefix(3) == [52, 55, 43])
        #expect(tokenizer.decode(tokens) == text)
    }

    @Test func roundTripsMultiByteUTF8() {
        let tokenizer = ByteTokenizer()
        let text = "Grüße, 東京 🚂 — naïve"
        let tokens = tokenizer.encode(text)
        // Each UTF-8 byte is its own token, so the count exceeds the character count.
        #expect(tokens.count == text.utf8.count)
        #expect(tokens.count > text.count)
        #expect(tokens.allSatisfy { (0..<Int32(ByteTokenizer.vocabularySize)).contains($0) })
        #expect(tokenizer.decode(tokens) == text)
        #expect(tokenizer.encode(bytes: Array(text.utf8)) == tokens)
    }
}

@Suite struct TextDatasetTests {
    private func dataset(seed: UInt64 = 7, context: Int = 8, fraction: Double = 0.1) throws -> TextDataset {
        try TextDataset(bytes: lettersThenDigits, name: "letters.txt", contextLength: context, seed: seed,
                        validationFraction: fraction)
    }

    @Test func splitsAtTheRequestedFraction() throws {
        let data = try dataset()
        #expect(data.trainingTokenCount == 900)
        #expect(data.validationTokenCount == 100)
        #expect(data.validationCount == (100 - 1) / 8)
    }

    @Test func trainingExamplesDependOnlyOnSeedAndIndex() throws {
        let first = try dataset(seed: 7)
        let again = try dataset(seed: 7)
        let other = try dataset(seed: 8)
        let indices = Array(0..<200)
        let forward = indices.map { first.trainingExample($0) }
        // Asking in another order, from another instance, gives the same examples.
        let backward = indices.reversed().map { again.trainingExample($0) }
        #expect(forward == Array(backward.reversed()))
        let otherSeed = indices.map { other.trainingExample($0) }
        let differing = zip(forward, otherSeed).filter { $0 != $1 }.count
        #expect(differing > 190)
        // Different indices of one seed are different windows too.
        #expect(Set(indices.map { first.trainingOffset($0) }).count > 150)
    }

    @Test func targetsAreInputsShiftedByOne() throws {
        let data = try dataset(context: 16)
        for index in 0..<300 {
            let example = data.trainingExample(index)
            let offset = data.trainingOffset(index)
            let window = lettersThenDigits[offset...(offset + 16)].map { Int32($0) }
            #expect(example.inputs.count == 16 && example.targets.count == 16)
            #expect(example.inputs == Array(window[0..<16]))
            #expect(example.targets == Array(window[1...16]))
            #expect(example.countedTargets == 16)
        }
    }

    @Test func trainingWindowsStayInsideTheTrainingPart() throws {
        let context = 8
        let data = try dataset(context: context)
        let starts = 900 - context
        var offsets: [Int] = []
        for index in 0..<10_000 {
            let example = data.trainingExample(index)
            #expect(example.inputs.allSatisfy(isLetter) && example.targets.allSatisfy(isLetter),
                    "training example \(index) contains validation bytes")
            offsets.append(data.trainingOffset(index))
        }
        #expect(offsets.allSatisfy { (0..<starts).contains($0) })
        // Uniform over all valid starts: both ends are reached and ten equal bins are about equally full.
        #expect(offsets.min() == 0)
        #expect(offsets.max() == starts - 1)
        var bins = [Int](repeating: 0, count: 10)
        for offset in offsets { bins[offset * 10 / starts] += 1 }
        #expect(bins.allSatisfy { (850...1150).contains($0) }, "offset histogram \(bins)")
    }

    @Test func validationWindowsAreConsecutive() throws {
        let context = 8
        let data = try dataset(context: context)
        let validation = lettersThenDigits[900...].map { Int32($0) }
        #expect(data.validationCount == 12)
        var covered: [Int32] = []
        for index in 0..<data.validationCount {
            let example = data.validationExample(index)
            #expect(example.inputs == Array(validation[(index * context)..<((index + 1) * context)]))
            #expect(example.targets == Array(validation[(index * context + 1)...((index + 1) * context)]))
            #expect(example.inputs.allSatisfy(isDigit) && example.targets.allSatisfy(isDigit))
            covered += example.inputs
        }
        // Inputs tile the validation part from its start without gaps or overlaps.
        #expect(covered == Array(validation.prefix(12 * context)))
        // Validation is the same whatever the seed.
        let otherSeed = try dataset(seed: 99, context: context)
        #expect((0..<12).map(otherSeed.validationExample) == (0..<12).map(data.validationExample))
    }

    @Test func validationWindowsUseTheLastByteWhenItFits() throws {
        // 100 validation bytes hold (100 − 1) / 11 = 9 windows, the last target being byte 99.
        let data = try dataset(context: 11)
        #expect(data.validationCount == 9)
        let last = data.validationExample(8)
        #expect(last.targets.last == Int32(lettersThenDigits[900 + 99]))
    }

    @Test func readsTheSameBytesFromAFile() throws {
        let fromBytes = try dataset()
        let fromFile = try withTemporaryFile(lettersThenDigits) { path in
            try TextDataset(path: path, contextLength: 8, seed: 7, validationFraction: 0.1)
        }
        #expect(fromFile.trainingTokenCount == 900)
        #expect(fromFile.validationCount == fromBytes.validationCount)
        #expect((0..<50).map(fromFile.trainingExample) == (0..<50).map(fromBytes.trainingExample))
        #expect((0..<12).map(fromFile.validationExample) == (0..<12).map(fromBytes.validationExample))
    }

    @Test func zeroValidationFractionTrainsOnEverything() throws {
        let data = try dataset(fraction: 0)
        #expect(data.validationCount == 0)
        #expect(data.validationTokenCount == 0)
        #expect(data.trainingTokenCount == lettersThenDigits.count)
        // With the whole file for training, windows now reach into the digits at the end.
        let offsets = (0..<5000).map(data.trainingOffset)
        #expect(offsets.max() == lettersThenDigits.count - 8 - 1)
    }

    @Test func summaryReportsSizes() throws {
        let bytes = [UInt8](repeating: UInt8(ascii: "x"), count: 1_200_000)
        let data = try TextDataset(bytes: bytes, name: "big.txt", contextLength: 64, seed: 1)
        #expect(data.summary == "big.txt: 1.2 MB (1.1 MB train, 0.1 MB validation)")
    }

    @Test func refusesAMissingFile() throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("convoy-missing-\(UUID().uuidString).txt").path
        let error = #expect(throws: ConvoyError.self) {
            try TextDataset(path: path, contextLength: 8, seed: 1)
        }
        guard case .io(let text) = error else {
            Issue.record("expected an I/O error, got \(String(describing: error))")
            return
        }
        #expect(text.contains(path))
    }

    @Test func refusesADirectory() throws {
        let error = #expect(throws: ConvoyError.self) {
            try TextDataset(path: FileManager.default.temporaryDirectory.path, contextLength: 8, seed: 1)
        }
        guard case .io = error else {
            Issue.record("expected an I/O error, got \(String(describing: error))")
            return
        }
    }

    @Test func refusesAnEmptyFile() throws {
        let error = try withTemporaryFile([]) { path in
            let error = #expect(throws: ConvoyError.self) {
                try TextDataset(path: path, contextLength: 8, seed: 1)
            }
            #expect(message(of: error).contains(path))
            return error
        }
        #expect(message(of: error).contains("empty"))
    }

    @Test func refusesATrainingPartShorterThanOneWindow() throws {
        // 20 bytes with fraction 0.5 leave 10 training bytes; context 10 needs 11.
        let bytes = [UInt8](repeating: UInt8(ascii: "a"), count: 20)
        let error = #expect(throws: ConvoyError.self) {
            try TextDataset(bytes: bytes, name: "short.txt", contextLength: 10, seed: 1, validationFraction: 0.5)
        }
        guard case .invalidConfiguration(let text) = error else {
            Issue.record("expected invalidConfiguration, got \(String(describing: error))")
            return
        }
        #expect(text.contains("short.txt"))
        #expect(text.contains("needs at least 11 bytes for --context 10"))
        // One byte fewer of context fits.
        #expect(throws: Never.self) {
            _ = try TextDataset(bytes: bytes, name: "short.txt", contextLength: 9, seed: 1, validationFraction: 0.5)
        }
    }

    @Test func refusesAValidationPartShorterThanOneWindow() throws {
        // The 100 validation bytes cannot hold the 101 bytes of one context-100 window.
        let error = #expect(throws: ConvoyError.self) {
            try TextDataset(bytes: lettersThenDigits, name: "letters.txt", contextLength: 100, seed: 1)
        }
        let text = message(of: error)
        #expect(text.contains("letters.txt"))
        #expect(text.contains("validation"))
        #expect(text.contains("--context"))
        // Without validation the same context is fine.
        let data = try TextDataset(bytes: lettersThenDigits, name: "letters.txt", contextLength: 100, seed: 1,
                                   validationFraction: 0)
        #expect(data.validationCount == 0)
    }

    @Test(arguments: [-0.1, 0.51, 1.0, Double.nan])
    func refusesAValidationFractionOutsideTheRange(fraction: Double) throws {
        let error = #expect(throws: ConvoyError.self) {
            try TextDataset(bytes: lettersThenDigits, name: "letters.txt", contextLength: 8, seed: 1,
                            validationFraction: fraction)
        }
        let text = message(of: error)
        #expect(text.contains("letters.txt"))
        #expect(text.contains("0.5"))
    }

    @Test func acceptsTheLargestValidationFraction() throws {
        let data = try dataset(fraction: 0.5)
        #expect(data.trainingTokenCount == 500)
        #expect(data.validationCount == (500 - 1) / 8)
    }
}
