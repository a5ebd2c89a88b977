import ConvoyTensor
import ConvoyTrain
import Foundation
import Testing

/// The byte-level BPE against Hugging Face `tokenizers` (a fixture it made: scripts/make_tokenizer_fixture.py)
/// and the properties datasets rely on: exact round trips, safe cut points, parallel encoding.
@Suite struct TokenizerTests {
    static let fixtureDirectory = Bundle.module.resourceURL!.appendingPathComponent("Fixtures/bpe-tiny").path

    struct Case {
        var bytes: [UInt8]
        var ids: [Int32]
    }

    struct Fixture {
        var cases: [Case]
        var specialID: Int32
        var vocabularySize: Int
    }

    static let fixture: Fixture = {
        let data = try! Data(contentsOf: URL(fileURLWithPath: fixtureDirectory + "/encodings.json"))
        let root = try! JSONSerialization.jsonObject(with: data) as! [String: Any]
        let cases = (root["cases"] as! [[String: Any]]).map { entry in
            Case(bytes: hexBytes(entry["hex"] as! String), ids: (entry["ids"] as! [Any]).map { Int32(($0 as! NSNumber).intValue) })
        }
        return Fixture(cases: cases, specialID: Int32((root["special_id"] as! NSNumber).intValue), vocabularySize: (root["vocab_size"] as! NSNumber).intValue)
    }()

    static func hexBytes(_ hex: String) -> [UInt8] {
        let digits = Array(hex.utf8).map { $0 <= 0x39 ? $0 - 0x30 : $0 - 0x61 + 10 }
        return stride(from: 0, to: digits.count, by: 2).map { digits[$0] << 4 | digits[$0 + 1] }
    }

    static func tokenizer(_ file: String = "tokenizer.json") throws -> ByteLevelBPETokenizer {
        try TokenizerLoader.loadByteLevelBPE(path: fixtureDirectory + "/" + file)
    }

    // MARK: - Identical to tokenizers

    @Test(arguments: ["tokenizer.json", "tokenizer-string-merges.json", "vocab.json", "merges.txt", ""])
    func idsAreThoseOfHuggingFaceTokenizers(file: String) throws {
        let tokenizer = try Self.tokenizer(file)
        #expect(Self.fixture.cases.count > 200)
        var mismatches = 0
        for testCase in Self.fixture.cases {
            let ids = tokenizer.encode(bytes: testCase.bytes)
            if ids != testCase.ids {
                mismatches += 1
                if mismatches <= 3 {
                    Issue.record("\(file): \(String(decoding: testCase.bytes, as: UTF8.self).debugDescription) gave \(ids), tokenizers \(testCase.ids)")
                }
            }
        }
        #expect(mismatches == 0, "\(mismatches) of \(Self.fixture.cases.count) cases differ")
        #expect(tokenizer.vocabularySize == Self.fixture.vocabularySize)
        #expect(tokenizer.endOfTextToken == Self.fixture.specialID)
    }

    @Test func fixtureCasesDecodeToTheirBytes() throws {
        let tokenizer = try Self.tokenizer()
        for testCase in Self.fixture.cases {
            #expect(tokenizer.decodeBytes(testCase.ids) == testCase.bytes)
        }
    }

    @Test func theDirectoryFormPrefersTokenizerJSONAndBytesIsTheByteTokenizer() throws {
        let fromDirectory = try TokenizerLoader.load(path: Self.fixtureDirectory)
        let fromFile = try Self.tokenizer()
        #expect(fromDirectory.fingerprint == fromFile.fingerprint)
        #expect(try TokenizerLoader.files(at: Self.fixtureDirectory) == [Self.fixtureDirectory + "/tokenizer.json"])
        #expect(try TokenizerLoader.load(path: "bytes") is ByteTokenizer)
        #expect(try TokenizerLoader.load(path: nil) is ByteTokenizer)
        // Different files, different fingerprints; the same files, the same one.
        let twoFiles = try Self.tokenizer("vocab.json")
        #expect(twoFiles.fingerprint != fromFile.fingerprint)
        #expect(try Self.tokenizer("merges.txt").fingerprint == twoFiles.fingerprint)
        #expect(fromFile.fingerprint.hasPrefix("bpe-"))
    }

    @Test func preTokenizationFollowsGPT2sPattern() {
        func pieces(_ text: String) -> [String] {
            let bytes = Array(text.utf8)
            return ByteLevelBPETokenizer.preTokenize(bytes).map { String(decoding: bytes[$0], as: UTF8.self) }
        }
        #expect(pieces("Hello   world!") == ["Hello", "  ", " world", "!"])
        #expect(pieces("x\t\ty") == ["x", "\t", "\t", "y"])
        #expect(pieces("it's ''s 'S") == ["it", "'s", " ''", "s", " '", "S"])
        #expect(pieces("we'll  ") == ["we", "'ll", "  "])
        #expect(pieces("a1b2 3.5") == ["a", "1", "b", "2", " 3", ".", "5"])
        #expect(pieces("\u{1C}\u{1C} x") == ["\u{1C}\u{1C}", " x"])
    }

    /// Rarer options (added tokens with lstrip, rstrip, single_word and normalized, overlapping added tokens;
    /// ignore_merges; use_regex false), each an edit of tokenizer.json with ids from `tokenizers`.
    @Test func optionVariantsGiveTheIDsOfTokenizers() throws {
        let directory = scratchDirectory("tokenizer-variants")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let data = try Data(contentsOf: URL(fileURLWithPath: Self.fixtureDirectory + "/variants.json"))
        let variants = try #require(try JSONSerialization.jsonObject(with: data) as? [[String: Any]])
        #expect(variants.count == 3)
        for variant in variants {
            let path = try editedTokenizerJSON(directory) { root in
                root["added_tokens"] = (root["added_tokens"] as! [Any]) + ((variant["added_tokens"] as? [Any]) ?? [])
                var model = root["model"] as! [String: Any]
                if let ignoreMerges = variant["ignore_merges"] { model["ignore_merges"] = ignoreMerges }
                root["model"] = model
                var preTokenizer = root["pre_tokenizer"] as! [String: Any]
                if let useRegex = variant["use_regex"] { preTokenizer["use_regex"] = useRegex }
                root["pre_tokenizer"] = preTokenizer
            }
            let tokenizer = try TokenizerLoader.loadByteLevelBPE(path: path)
            let cases = variant["cases"] as! [[String: Any]]
            #expect(cases.count > 20)
            for entry in cases {
                let bytes = Self.hexBytes(entry["hex"] as! String)
                let expected = (entry["ids"] as! [Any]).map { Int32(($0 as! NSNumber).intValue) }
                #expect(tokenizer.encode(bytes: bytes) == expected, "\(variant["name"] ?? ""): \(String(decoding: bytes, as: UTF8.self).debugDescription)")
            }
        }
    }

    // MARK: - Properties

    /// Random text mixing what tokenisers find hard: invalid bytes, long whitespace runs, contractions,
    /// special tokens and their prefixes, non-Latin scripts, combining marks and emoji.
    static func randomText(_ random: inout SplitMix, maximumParts: Int = 60) -> [UInt8] {
        let pool: [String] = ["a", "Z", "the", " of", "9", "42", ".", ",", "!", "'", "'s", "'ll", "'re", "'S", " ", " ", " ", "\t", "\n", "\r\n",
                              "\u{A0}", "\u{3000}", "\u{85}", "\u{1C}", "é", "e\u{301}", "日本", "한", "😀", "👍🏽", "١٢", "½", "<|endoftext|>", "<|endo", "|>", "<"]
        var bytes: [UInt8] = []
        for _ in 0..<Int.random(in: 0...maximumParts, using: &random) {
            switch Int.random(in: 0..<20, using: &random) {
            case 0: bytes.append(UInt8.random(in: 0x80...0xFF, using: &random))
            case 1: bytes.append(UInt8.random(in: 0...0xFF, using: &random))
            case 2: bytes += Array(repeating: [0x20, 0x09, 0x0A][Int.random(in: 0..<3, using: &random)], count: Int.random(in: 2...120, using: &random))
            default: bytes += Array(pool[Int.random(in: 0..<pool.count, using: &random)].utf8)
            }
        }
        return bytes
    }

    @Test func anyBytesRoundTrip() throws {
        let tokenizer = try Self.tokenizer()
        for seed in 0..<400 {
            var random = SplitMix(seed: UInt64(seed))
            let bytes: [UInt8]
            if seed % 4 == 0 {
                bytes = (0..<Int.random(in: 0...300, using: &random)).map { _ in UInt8.random(in: 0...255, using: &random) }
            } else {
                bytes = Self.randomText(&random)
            }
            let ids = tokenizer.encode(bytes: bytes)
            #expect(tokenizer.decodeBytes(ids) == bytes, "seed \(seed)")
            #expect(ids.allSatisfy { $0 >= 0 && Int($0) < tokenizer.vocabularySize })
        }
        let spaces = [UInt8](repeating: 0x20, count: 100_000) + Array("x".utf8)
        #expect(tokenizer.decodeBytes(tokenizer.encode(bytes: spaces)) == spaces)
    }

    @Test func theFlatScanAndTheHeapMergeAlike() throws {
        let tokenizer = try Self.tokenizer()
        for seed in 0..<200 {
            var random = SplitMix(seed: UInt64(seed) + 1000)
            let bytes = Self.randomText(&random)
            #expect(tokenizer.encode(bytes: bytes, mergingWithHeap: true) == tokenizer.encode(bytes: bytes, mergingWithHeap: false), "seed \(seed)")
            #expect(tokenizer.encode(bytes: bytes, mergingWithHeap: true) == tokenizer.encode(bytes: bytes), "seed \(seed)")
        }
    }

    @Test func safeCutsDoNotChangeIDs() throws {
        let tokenizer = try Self.tokenizer()
        var cutsInside = 0
        for seed in 0..<300 {
            var random = SplitMix(seed: UInt64(seed) + 5000)
            let bytes = Self.randomText(&random, maximumParts: 120)
            let whole = tokenizer.encode(bytes: bytes)
            for _ in 0..<4 {
                let offset = Int.random(in: 0...bytes.count, using: &random)
                let cut = bytes.withUnsafeBufferPointer { tokenizer.safeCut(in: $0, near: offset) }
                #expect(cut >= offset && cut <= bytes.count)
                if cut > 0 && cut < bytes.count { cutsInside += 1 }
                let split = tokenizer.encode(bytes: Array(bytes[..<cut])) + tokenizer.encode(bytes: Array(bytes[cut...]))
                #expect(split == whole, "seed \(seed), cut \(cut) of \(bytes.count)")
            }
        }
        #expect(cutsInside > 500, "the test should mostly cut inside the text, got \(cutsInside)")
    }

    @Test func everyCandidateCutOfTheFixtureIsSafe() throws {
        let tokenizer = try Self.tokenizer()
        for testCase in Self.fixture.cases where testCase.bytes.count < 400 {
            let bytes = testCase.bytes
            var offset = 0
            while offset < bytes.count {
                let cut = bytes.withUnsafeBufferPointer { tokenizer.safeCut(in: $0, near: offset) }
                let split = tokenizer.encode(bytes: Array(bytes[..<cut])) + tokenizer.encode(bytes: Array(bytes[cut...]))
                #expect(split == testCase.ids, "cut \(cut) of \(String(decoding: bytes, as: UTF8.self).debugDescription)")
                offset = max(cut, offset + 1)
            }
        }
    }

    @Test(arguments: [1, 7, 64, 4096])
    func parallelEncodingEqualsSerial(chunkBytes: Int) throws {
        let tokenizer = try Self.tokenizer()
        var random = SplitMix(seed: UInt64(chunkBytes))
        var bytes: [UInt8] = []
        while bytes.count < 60_000 { bytes += Self.randomText(&random) }
        let pool = ComputePool(threadCount: 3)
        let boundaries = bytes.withUnsafeBufferPointer { tokenizer.chunkBoundaries(of: $0, chunkBytes: chunkBytes) }
        #expect(boundaries.first == 0 && boundaries.last == bytes.count && zip(boundaries, boundaries.dropFirst()).allSatisfy { $0 < $1 })
        #expect(boundaries.count > min(10, bytes.count / chunkBytes))
        #expect(tokenizer.encodeInParallel(bytes: bytes, chunkBytes: chunkBytes, pool: pool) == tokenizer.encode(bytes: bytes))
        let byteTokenizer = ByteTokenizer()
        #expect(byteTokenizer.encodeInParallel(bytes: bytes, chunkBytes: chunkBytes, pool: pool) == byteTokenizer.encode(bytes: bytes))
    }

    // MARK: - Bad files

    func message(_ body: () throws -> Void) -> String {
        do { try body() } catch let error as ConvoyError { return "\(error)" } catch { return "not a ConvoyError: \(error)" }
        return "(no error)"
    }

    /// A copy of the fixture's tokenizer.json with `edit` applied to its JSON object.
    func editedTokenizerJSON(_ directory: String, _ edit: (inout [String: Any]) -> Void) throws -> String {
        let data = try Data(contentsOf: URL(fileURLWithPath: Self.fixtureDirectory + "/tokenizer.json"))
        var root = try JSONSerialization.jsonObject(with: data) as! [String: Any]
        edit(&root)
        let path = directory + "/tokenizer.json"
        try JSONSerialization.data(withJSONObject: root).write(to: URL(fileURLWithPath: path))
        return path
    }

    @Test func malformedTokenizerFilesGiveClearErrors() throws {
        let directory = scratchDirectory("tokenizer-errors")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)

        var text = message { _ = try TokenizerLoader.load(path: directory + "/absent") }
        #expect(text.contains(directory + "/absent") && text.contains("does not exist"), "\(text)")
        text = message { _ = try TokenizerLoader.load(path: directory) }
        #expect(text.contains("neither tokenizer.json nor vocab.json + merges.txt"), "\(text)")

        let original = try Data(contentsOf: URL(fileURLWithPath: Self.fixtureDirectory + "/tokenizer.json"))
        let truncated = directory + "/tokenizer.json"
        try original.prefix(original.count / 2).write(to: URL(fileURLWithPath: truncated))
        text = message { _ = try TokenizerLoader.load(path: directory) }
        #expect(text.contains(truncated) && text.contains("not valid JSON"), "\(text)")

        var path = try editedTokenizerJSON(directory) { root in
            var model = root["model"] as! [String: Any]
            var merges = model["merges"] as! [Any]
            merges[3] = ["Ġ", "nonexistent"]
            model["merges"] = merges
            root["model"] = model
        }
        text = message { _ = try TokenizerLoader.load(path: path) }
        #expect(text.contains(path) && text.contains("merge 4") && text.contains("nonexistent"), "\(text)")

        path = try editedTokenizerJSON(directory) { root in
            var model = root["model"] as! [String: Any]
            var merges = model["merges"] as! [Any]
            merges[0] = "a b c"
            model["merges"] = merges
            root["model"] = model
        }
        text = message { _ = try TokenizerLoader.load(path: path) }
        #expect(text.contains("model.merges[0]") && text.contains("two tokens separated by one space"), "\(text)")

        path = try editedTokenizerJSON(directory) { root in
            var model = root["model"] as! [String: Any]
            var vocabulary = model["vocab"] as! [String: Any]
            vocabulary["Ġ"] = nil
            model["vocab"] = vocabulary
            root["model"] = model
        }
        text = message { _ = try TokenizerLoader.load(path: path) }
        #expect(text.contains(path) && text.contains("lacks the byte-level tokens") && text.contains("0x20"), "\(text)")

        path = try editedTokenizerJSON(directory) { root in root["pre_tokenizer"] = ["type": "Whitespace"] }
        text = message { _ = try TokenizerLoader.load(path: path) }
        #expect(text.contains("pre_tokenizer is Whitespace"), "\(text)")

        path = try editedTokenizerJSON(directory) { root in root["pre_tokenizer"] = ["type": "ByteLevel", "add_prefix_space": true] }
        text = message { _ = try TokenizerLoader.load(path: path) }
        #expect(text.contains("add_prefix_space"), "\(text)")

        path = try editedTokenizerJSON(directory) { root in root["model"] = ["type": "WordPiece", "vocab": ["a": 0]] }
        text = message { _ = try TokenizerLoader.load(path: path) }
        #expect(text.contains("model type WordPiece is not supported"), "\(text)")

        path = try editedTokenizerJSON(directory) { root in root["normalizer"] = ["type": "NFC"] }
        text = message { _ = try TokenizerLoader.load(path: path) }
        #expect(text.contains("normalizer (NFC)"), "\(text)")

        try FileManager.default.removeItem(atPath: directory + "/tokenizer.json")
        try Data("{\"a\": 0}".utf8).write(to: URL(fileURLWithPath: directory + "/vocab.json"))
        text = message { _ = try TokenizerLoader.load(path: directory) }
        #expect(text.contains("vocab.json but no merges.txt"), "\(text)")
        try Data("#version: 0.2\na b\nc\n".utf8).write(to: URL(fileURLWithPath: directory + "/merges.txt"))
        try FileManager.default.copyItem(atPath: Self.fixtureDirectory + "/vocab.json", toPath: directory + "/vocab2.json")
        try FileManager.default.removeItem(atPath: directory + "/vocab.json")
        try FileManager.default.moveItem(atPath: directory + "/vocab2.json", toPath: directory + "/vocab.json")
        text = message { _ = try TokenizerLoader.load(path: directory) }
        #expect(text.contains(directory + "/merges.txt") && text.contains("line 3"), "\(text)")
        try Data("{\"a\": \"zero\"}".utf8).write(to: URL(fileURLWithPath: directory + "/vocab.json"))
        text = message { _ = try TokenizerLoader.load(path: directory) }
        #expect(text.contains(directory + "/vocab.json") && text.contains("not an integer id"), "\(text)")
    }
}
