import ConvoyTensor
import ConvoyTrain
import Foundation
import Testing

/// A tokenizer with ids above 16 bits (each byte b is id 69_000 + b), so token files store 4-byte ids.
struct WideIdTokenizer: TextTokenizer {
    var vocabularySize: Int { 69_256 }
    func encode(bytes: [UInt8]) -> [Int32] { bytes.map { 69_000 + Int32($0) } }
    func decodeBytes(_ tokens: [Int32]) -> [UInt8] { tokens.map { UInt8($0 - 69_000) } }
    var fingerprint: String { "wide-ids" }
    var endOfTextToken: Int32? { nil }
    func safeCut(in bytes: UnsafeBufferPointer<UInt8>, near offset: Int) -> Int { min(max(offset, 0), bytes.count) }
}

func fixtureDirectory(_ name: String) -> String {
    Bundle.module.resourceURL!.appendingPathComponent("Fixtures/" + name).path
}

/// Deterministic text-like bytes of every value 0 ... 255.
func corpusBytes(_ count: Int, seed: UInt64 = 7) -> [UInt8] {
    var state = seed
    return (0..<count).map { _ in
        state = state &* 6364136223846793005 &+ 1442695040888963407
        return UInt8(truncatingIfNeeded: state >> 56)
    }
}

@Suite struct TokenCacheTests {
    func scratchCorpus(_ bytes: [UInt8]) throws -> (directory: String, corpus: String) {
        let directory = scratchDirectory("token-cache")
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let corpus = directory + "/corpus.txt"
        try Data(bytes).write(to: URL(fileURLWithPath: corpus))
        return (directory, corpus)
    }

    @Test func mappedDatasetDrawsTheSameExamplesAsInMemorySampling() throws {
        let bytes = corpusBytes(5_000)
        let (directory, corpus) = try scratchCorpus(bytes)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let cache = TokenCache(directory: directory + "/cache")
        let (tokens, origin) = try cache.tokens(corpus: corpus, tokenizer: ByteTokenizer(), threads: 3, chunkBytes: 333)
        #expect(origin == .tokenised)
        #expect(tokens.header.tokenWidth == 2 && tokens.count == bytes.count)
        let mapped = try TextDataset(tokens: tokens, name: corpus, contextLength: 24, seed: 11, validationFraction: 0.1)
        let inMemory = try TextDataset(bytes: bytes, name: corpus, contextLength: 24, seed: 11, validationFraction: 0.1)
        #expect(mapped.trainingTokenCount == inMemory.trainingTokenCount && mapped.validationCount == inMemory.validationCount)
        for index in 0..<300 { #expect(mapped.trainingExample(index) == inMemory.trainingExample(index), "training example \(index)") }
        for index in 0..<inMemory.validationCount { #expect(mapped.validationExample(index) == inMemory.validationExample(index), "validation example \(index)") }
    }

    @Test(arguments: [1, 2, 5])
    func parallelTokenisationEqualsSerialEncode(threads: Int) throws {
        // Text with prose, code, Unicode and long whitespace runs, then random bytes (invalid UTF-8).
        let text = try Data(contentsOf: URL(fileURLWithPath: fixtureDirectory("hf-gpt2-bpe-tiny") + "/corpus.txt"))
        let bytes = [UInt8](text) + corpusBytes(3_000, seed: 3) + [UInt8](text.prefix(2_000))
        let bpe = try TokenizerLoader.load(path: fixtureDirectory("hf-gpt2-bpe-tiny"))
        for tokenizer in [ByteTokenizer(), WideIdTokenizer(), bpe] as [any TextTokenizer] {
            var ids: [Int32] = []
            var reported: [Int] = []
            try bytes.withUnsafeBufferPointer { corpus in
                try ParallelTokenization(tokenizer: tokenizer, threads: threads, chunkBytes: 97)
                    .encode(corpus, emit: { ids += $0 }, progress: { reported.append($0) })
            }
            #expect(ids == tokenizer.encode(bytes: bytes), "\(tokenizer.fingerprint.prefix(40)), \(threads) threads")
            #expect(reported.last == bytes.count && reported == reported.sorted())
        }
    }

    @Test func wideVocabulariesStoreFourByteIds() throws {
        let bytes = corpusBytes(1_000)
        let (directory, corpus) = try scratchCorpus(bytes)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let (tokens, _) = try TokenCache(directory: directory + "/cache").tokens(corpus: corpus, tokenizer: WideIdTokenizer(), threads: 2, chunkBytes: 100)
        #expect(tokens.header.tokenWidth == 4)
        #expect(tokens.tokens(from: 0, count: tokens.count) == WideIdTokenizer().encode(bytes: bytes))
    }

    @Test func theCacheIsKeyedByCorpusAndTokenizerAndReused() throws {
        let bytes = corpusBytes(2_000)
        let (directory, corpus) = try scratchCorpus(bytes)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let cache = TokenCache(directory: directory + "/cache")
        let first = try cache.tokens(corpus: corpus, tokenizer: ByteTokenizer(), threads: 2)
        let again = try cache.tokens(corpus: corpus, tokenizer: ByteTokenizer(), threads: 2)
        #expect(first.origin == .tokenised && again.origin == .cached && again.tokens.path == first.tokens.path)
        let otherTokenizer = try cache.tokens(corpus: corpus, tokenizer: WideIdTokenizer(), threads: 2)
        #expect(otherTokenizer.origin == .tokenised && otherTokenizer.tokens.path != first.tokens.path)
        var changed = bytes
        changed[1_234] ^= 1
        try Data(changed).write(to: URL(fileURLWithPath: corpus))
        let changedCorpus = try cache.tokens(corpus: corpus, tokenizer: ByteTokenizer(), threads: 2)
        #expect(changedCorpus.origin == .tokenised && changedCorpus.tokens.path != first.tokens.path)
        #expect(changedCorpus.tokens.tokens(from: 1_234, count: 1) == [Int32(changed[1_234])])
        // Nothing but the three token files: the temporaries were renamed away.
        #expect(try FileManager.default.contentsOfDirectory(atPath: directory + "/cache").sorted().count == 3)
    }

    /// A damaged token file (ids flipped, truncated, header corrupt) is detected, named and rebuilt.
    @Test(arguments: ["ids", "truncated", "header"])
    func aDamagedCacheIsDetectedAndRebuilt(damage: String) throws {
        let bytes = corpusBytes(3_000)
        let (directory, corpus) = try scratchCorpus(bytes)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let cache = TokenCache(directory: directory + "/cache")
        let path = try cache.tokens(corpus: corpus, tokenizer: ByteTokenizer(), threads: 2).tokens.path
        var file = try Data(contentsOf: URL(fileURLWithPath: path))
        switch damage {
        case "ids": file[file.count - 100] ^= 0x10
        case "truncated": file = file.prefix(file.count - 7)
        default: file[20] ^= 0x01  // the token count
        }
        try file.write(to: URL(fileURLWithPath: path))
        #expect(throws: ConvoyError.self) { _ = try MappedTokenFile(path: path) }
        let rebuilt = try cache.tokens(corpus: corpus, tokenizer: ByteTokenizer(), threads: 2)
        guard case .rebuilt(let reason) = rebuilt.origin else { Issue.record("\(damage): not rebuilt (\(rebuilt.origin))"); return }
        let expected = ["ids": "ids are corrupt", "truncated": "truncated", "header": "header is corrupt"][damage]!
        #expect(reason.contains(expected), "\(damage): \(reason)")
        #expect(rebuilt.tokens.tokens(from: 0, count: rebuilt.tokens.count) == ByteTokenizer().encode(bytes: bytes))
        #expect(try MappedTokenFile(path: path).count == bytes.count)
    }

    @Test func aFileConvoyDidNotWriteIsNeverReplaced() throws {
        let bytes = corpusBytes(500)
        let (directory, corpus) = try scratchCorpus(bytes)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let cache = TokenCache(directory: directory + "/cache")
        let path = try cache.tokens(corpus: corpus, tokenizer: ByteTokenizer(), threads: 1).tokens.path
        let foreign = Data("someone else's notes".utf8)
        try foreign.write(to: URL(fileURLWithPath: path))
        #expect { _ = try cache.tokens(corpus: corpus, tokenizer: ByteTokenizer(), threads: 1) } throws: { error in
            "\(error)".contains("not a Convoy token file") && "\(error)".contains("--token-cache")
        }
        #expect(try Data(contentsOf: URL(fileURLWithPath: path)) == foreign)
    }

    @Test func theDefaultCacheDirectoryFollowsTheEnvironment() {
        #expect(TokenCache.defaultDirectory(environment: ["CONVOY_CACHE": "/data/cc", "HOME": "/home/u"]) == "/data/cc/tokens")
        #expect(TokenCache.defaultDirectory(environment: ["XDG_CACHE_HOME": "/x", "HOME": "/home/u"]) == "/x/convoy/tokens")
        #expect(TokenCache.defaultDirectory(environment: ["HOME": "/home/u"]) == "/home/u/.cache/convoy/tokens")
        #expect(TokenCache(directory: "/chosen").directory == "/chosen")
    }

    @Test func trainingWithATokenizerUsesTheCacheAndRefusesBadInputs() throws {
        let bytes = corpusBytes(4_000)
        let (directory, corpus) = try scratchCorpus(bytes)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        func flags(_ extra: [(String, String)]) -> [(flag: String, value: String)] {
            [("--data", corpus), ("--context", "16"), ("--layers", "1"), ("--d-model", "16"), ("--heads", "2"), ("--batch", "4"),
             ("--steps", "3"), ("--eval-every", "0"), ("--output", directory + "/run"), ("--token-cache", directory + "/cache"),
             ("--optimizer", "sgd"), ("--lr", "0.1")] + extra
        }
        // `--tokenizer bytes` goes through the mapped cache and trains exactly as the in-memory byte path.
        let mapped = try Trainer(configuration: try TrainingSettings.resolve(configFile: nil, flags: flags([("--tokenizer", "bytes")])))
        var plain = try TrainingSettings.resolve(configFile: nil, flags: flags([]))
        plain.output = directory + "/run-plain"
        let inMemory = try Trainer(configuration: plain)
        #expect(mapped.dataset.summary.contains("tokens") && inMemory.dataset.summary.contains(" KB"))
        for step in 0..<3 { #expect(try mapped.trainStep(step).loss == inMemory.trainStep(step).loss) }
        #expect(FileManager.default.fileExists(atPath: directory + "/cache"))

        #expect { _ = try TrainingSettings.resolve(configFile: nil, flags: flags([("--tokenizer", directory + "/missing.json")])) } throws: { error in
            "\(error)".contains("tokenizer \(directory)/missing.json does not exist")
        }
        #expect { _ = try TrainingSettings.resolve(configFile: nil, flags: flags([("--tokenizer", directory)])) } throws: { error in
            "\(error)".contains("holds neither tokenizer.json nor vocab.json + merges.txt")
        }
        #expect { _ = try TrainingSettings.resolve(configFile: nil, flags: [("--tokenizer", "bytes")]) } throws: { error in
            "\(error)".contains("--tokenizer tokenises a text corpus")
        }
    }
}
