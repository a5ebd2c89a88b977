import ConvoyParallel
import ConvoyTensor
import Foundation

/// Finds and reads a tokenizer: the byte tokenizer, or a byte-level BPE from Hugging Face files.
///
/// A path may be
/// - `bytes`: ``ByteTokenizer`` (the default everywhere);
/// - a `tokenizer.json` file (the `tokenizers` library's format; merges as `"a b"` strings or `["a", "b"]`
///   pairs);
/// - a `vocab.json` or `merges.txt` file, with the other beside it (GPT-2's original two files); there,
///   `<|endoftext|>`, when the vocabulary has it, is the special token, as `GPT2Tokenizer` makes it;
/// - a directory holding `tokenizer.json` (preferred) or `vocab.json` + `merges.txt`, such as a Hugging Face
///   model directory.
///
/// What Convoy reads of `tokenizer.json`: the BPE model (vocab, merges, `ignore_merges`), the ByteLevel
/// pre-tokenizer's `use_regex`, and `added_tokens`. Encoding adds no tokens around the text (as
/// `encode(text, add_special_tokens=False)`; a post-processor is ignored). Files that need more (a
/// normalizer, a prefix space, another pre-tokenizer or model, BPE dropout, subword prefixes) are refused
/// with the reason, rather than encoded differently.
public enum TokenizerLoader {
    /// The name that selects ``ByteTokenizer``.
    public static let byteTokenizerName = "bytes"

    /// The tokenizer at `path` (see the type's documentation); nil or `bytes` gives ``ByteTokenizer``.
    ///
    /// - Throws: ``ConvoyError`` naming the file and what is wrong with it.
    public static func load(path: String?) throws -> any TextTokenizer {
        guard let path, path != byteTokenizerName else { return ByteTokenizer() }
        return try loadByteLevelBPE(path: path)
    }

    /// The byte-level BPE at `path` (a file or a directory, see the type's documentation).
    public static func loadByteLevelBPE(path: String) throws -> ByteLevelBPETokenizer {
        let files = try files(at: path)
        if files.count == 1 { return try loadTokenizerJSON(path: files[0]) }
        return try loadVocabularyAndMerges(vocabularyPath: files[0], mergesPath: files[1])
    }

    /// The files that make up the tokenizer at `path`: `[tokenizer.json]` or `[vocab.json, merges.txt]`
    /// (to copy them, for example, into a saved model directory).
    public static func files(at path: String) throws -> [String] {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
            throw ConvoyError.invalidConfiguration("tokenizer \(path) does not exist; give a tokenizer.json, a vocab.json with merges.txt beside it, a directory holding either (such as a Hugging Face model directory), or \"\(byteTokenizerName)\" for bytes")
        }
        let url = URL(fileURLWithPath: path)
        if isDirectory.boolValue {
            let tokenizerJSON = url.appendingPathComponent("tokenizer.json").path
            if FileManager.default.fileExists(atPath: tokenizerJSON) { return [tokenizerJSON] }
            let vocabulary = url.appendingPathComponent("vocab.json").path, merges = url.appendingPathComponent("merges.txt").path
            let hasVocabulary = FileManager.default.fileExists(atPath: vocabulary), hasMerges = FileManager.default.fileExists(atPath: merges)
            if hasVocabulary && hasMerges { return [vocabulary, merges] }
            if hasVocabulary || hasMerges {
                throw ConvoyError.invalidConfiguration("tokenizer directory \(path) has \(hasVocabulary ? "vocab.json but no merges.txt" : "merges.txt but no vocab.json"); a byte-level BPE needs both (or a tokenizer.json)")
            }
            throw ConvoyError.invalidConfiguration("tokenizer directory \(path) holds neither tokenizer.json nor vocab.json + merges.txt")
        }
        let directory = url.deletingLastPathComponent()
        switch url.lastPathComponent {
        case "vocab.json", "merges.txt":
            let vocabulary = directory.appendingPathComponent("vocab.json").path, merges = directory.appendingPathComponent("merges.txt").path
            let other = url.lastPathComponent == "vocab.json" ? merges : vocabulary
            guard FileManager.default.fileExists(atPath: other) else {
                throw ConvoyError.invalidConfiguration("tokenizer \(path) needs \(other) beside it (vocab.json and merges.txt go together)")
            }
            return [vocabulary, merges]
        default:
            return [path]
        }
    }

    /// A `tokenizer.json` in the `tokenizers` library's format.
    public static func loadTokenizerJSON(path: String) throws -> ByteLevelBPETokenizer {
        let data = try read(path)
        let document = try parseJSON(data, path: path)
        func fail(_ reason: String) -> ConvoyError { .malformedFile(path: path, reason: reason) }
        guard let root = document as? [String: Any] else { throw fail("expected a JSON object with \"model\", \"pre_tokenizer\" and \"added_tokens\"") }
        guard let model = root["model"] as? [String: Any] else { throw fail("has no \"model\" object") }
        let modelType = model["type"] as? String ?? "BPE"
        guard modelType == "BPE" else { throw fail("model type \(modelType) is not supported; Convoy reads byte-level BPE models (type BPE), such as GPT-2's") }
        if let dropout = model["dropout"] as? Double, dropout > 0 {
            throw fail("model.dropout is \(dropout); BPE dropout makes encoding random, set it to null")
        }
        for key in ["continuing_subword_prefix", "end_of_word_suffix"] {
            if let value = model[key] as? String, !value.isEmpty { throw fail("model.\(key) is \(value.debugDescription); byte-level BPE uses none, so Convoy does not support it") }
        }
        if let normalizer = root["normalizer"], !(normalizer is NSNull) {
            let isEmptySequence = (normalizer as? [String: Any]).map { $0["type"] as? String == "Sequence" && (($0["normalizers"] as? [Any])?.isEmpty ?? false) } ?? false
            if !isEmptySequence { throw fail("has a normalizer (\(describeType(normalizer))); Convoy's byte-level BPE encodes raw text, like GPT-2, and does not support normalizers") }
        }
        let useRegex = try byteLevelUsesRegex(root["pre_tokenizer"], fail: fail)
        guard let vocabularyObject = model["vocab"] as? [String: Any] else { throw fail("model.vocab is missing or not an object of token → id") }
        let vocabulary = try parseVocabulary(vocabularyObject, where: "model.vocab", fail: fail)
        guard let mergesArray = model["merges"] as? [Any] else { throw fail("model.merges is missing or not an array") }
        var merges: [(String, String)] = []
        merges.reserveCapacity(mergesArray.count)
        for (index, entry) in mergesArray.enumerated() {
            if let line = entry as? String {
                merges.append(try splitMerge(line, fail: { fail("model.merges[\(index)] \($0)") }))
            } else if let pair = entry as? [Any], pair.count == 2, let left = pair[0] as? String, let right = pair[1] as? String {
                merges.append((left, right))
            } else {
                throw fail("model.merges[\(index)] is neither a string \"a b\" nor a pair [\"a\", \"b\"]")
            }
        }
        var addedTokens: [ByteLevelBPETokenizer.AddedToken] = []
        for (index, entry) in ((root["added_tokens"] as? [Any]) ?? []).enumerated() {
            guard let token = entry as? [String: Any], let content = token["content"] as? String, let id = token["id"].flatMap(integer) else {
                throw fail("added_tokens[\(index)] needs a string \"content\" and an integer \"id\"")
            }
            func flag(_ key: String, _ fallback: Bool) -> Bool { (token[key] as? Bool) ?? fallback }
            addedTokens.append(.init(content: content, id: Int32(clamping: id), special: flag("special", false), singleWord: flag("single_word", false), leftStrip: flag("lstrip", false), rightStrip: flag("rstrip", false), normalized: flag("normalized", !flag("special", false))))
        }
        let ignoreMerges = (model["ignore_merges"] as? Bool) ?? false
        return try ByteLevelBPETokenizer(vocabulary: vocabulary, merges: merges, addedTokens: addedTokens, useRegex: useRegex, ignoreMerges: ignoreMerges, fingerprint: fingerprint(of: [("tokenizer.json", data)]), source: path)
    }

    /// GPT-2's two files: `vocab.json` (token → id) and `merges.txt` (one `a b` per line after a `#version`
    /// line).
    public static func loadVocabularyAndMerges(vocabularyPath: String, mergesPath: String) throws -> ByteLevelBPETokenizer {
        let vocabularyData = try read(vocabularyPath), mergesData = try read(mergesPath)
        guard let object = try parseJSON(vocabularyData, path: vocabularyPath) as? [String: Any] else {
            throw ConvoyError.malformedFile(path: vocabularyPath, reason: "expected a JSON object of token → id")
        }
        let vocabulary = try parseVocabulary(object, where: "the vocabulary", fail: { .malformedFile(path: vocabularyPath, reason: $0) })
        guard let text = String(data: mergesData, encoding: .utf8) else {
            throw ConvoyError.malformedFile(path: mergesPath, reason: "is not valid UTF-8 text")
        }
        var merges: [(String, String)] = []
        for (index, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = line.hasSuffix("\r") ? line.dropLast() : line
            if line.isEmpty || (index == 0 && line.hasPrefix("#version")) { continue }
            merges.append(try splitMerge(String(line), fail: { .malformedFile(path: mergesPath, reason: "line \(index + 1) \($0)") }))
        }
        let addedTokens = vocabulary["<|endoftext|>"].map { [ByteLevelBPETokenizer.AddedToken(content: "<|endoftext|>", id: Int32($0))] } ?? []
        return try ByteLevelBPETokenizer(vocabulary: vocabulary, merges: merges, addedTokens: addedTokens, fingerprint: fingerprint(of: [("vocab.json", vocabularyData), ("merges.txt", mergesData)]), source: "\(vocabularyPath) with \(mergesPath)")
    }

    // MARK: - Parts

    private static func read(_ path: String) throws -> Data {
        do {
            return try Data(contentsOf: URL(fileURLWithPath: path))
        } catch {
            throw ConvoyError.io("cannot read tokenizer file \(path): \(error.localizedDescription)")
        }
    }

    private static func parseJSON(_ data: Data, path: String) throws -> Any {
        do {
            return try JSONSerialization.jsonObject(with: data, options: [.fragmentsAllowed])
        } catch {
            throw ConvoyError.malformedFile(path: path, reason: "is not valid JSON (\(error.localizedDescription)); is the file truncated?")
        }
    }

    private static func parseVocabulary(_ object: [String: Any], where place: String, fail: (String) -> ConvoyError) throws -> [String: Int] {
        var vocabulary: [String: Int] = [:]
        vocabulary.reserveCapacity(object.count)
        for (token, value) in object {
            guard let id = integer(value) else {
                throw fail("\(place) maps \(token.debugDescription) to \(value), not an integer id")
            }
            vocabulary[token] = id
        }
        guard !vocabulary.isEmpty else { throw fail("\(place) is empty") }
        return vocabulary
    }

    private static func splitMerge(_ line: String, fail: (String) -> ConvoyError) throws -> (String, String) {
        let parts = line.split(separator: " ", omittingEmptySubsequences: false)
        guard parts.count == 2, !parts[0].isEmpty, !parts[1].isEmpty else {
            throw fail("is \(line.debugDescription); a merge is two tokens separated by one space")
        }
        return (String(parts[0]), String(parts[1]))
    }

    /// `use_regex` of a ByteLevel pre-tokenizer (alone or the only one in a Sequence).
    private static func byteLevelUsesRegex(_ value: Any?, fail: (String) -> ConvoyError) throws -> Bool {
        guard let object = value as? [String: Any] else {
            throw fail("pre_tokenizer is \(value == nil || value is NSNull ? "missing" : "not an object"); a byte-level BPE needs the ByteLevel pre-tokenizer")
        }
        let type = object["type"] as? String ?? "?"
        if type == "Sequence", let inner = object["pretokenizers"] as? [Any], inner.count == 1 {
            return try byteLevelUsesRegex(inner[0], fail: fail)
        }
        guard type == "ByteLevel" else {
            throw fail("pre_tokenizer is \(type); Convoy supports the ByteLevel pre-tokenizer (GPT-2's pattern) only")
        }
        if (object["add_prefix_space"] as? Bool) == true {
            throw fail("pre_tokenizer.add_prefix_space is true; Convoy encodes text so that decoding gives back the same bytes, which an added prefix space breaks; set it to false")
        }
        return (object["use_regex"] as? Bool) ?? true
    }

    private static func integer(_ value: Any) -> Int? {
        if let integer = value as? Int { return integer }
        if let number = value as? NSNumber { return Int(exactly: number.doubleValue) }
        return nil
    }

    private static func describeType(_ value: Any) -> String {
        ((value as? [String: Any])?["type"] as? String) ?? "\(value)"
    }

    /// `bpe-` and a checksum of the files' names and contents.
    private static func fingerprint(of files: [(name: String, contents: Data)]) -> String {
        var combined = Data()
        for file in files {
            combined.append(contentsOf: Array(file.name.utf8) + [0])
            combined.append(contentsOf: withUnsafeBytes(of: UInt64(file.contents.count).littleEndian) { Array($0) })
            combined.append(file.contents)
        }
        return "bpe-" + combined.withUnsafeBytes { PieceChecksum.hex($0) }
    }
}
