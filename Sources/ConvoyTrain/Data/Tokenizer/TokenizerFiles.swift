import ConvoyTensor
import Foundation

/// Where a tokenizer's files are, and loading one from a path given by a user: `bytes` (the byte tokenizer),
/// a `tokenizer.json` file, or a directory holding `tokenizer.json` or `vocab.json` + `merges.txt` (a Hugging
/// Face model directory, or a Convoy checkpoint that copied them in).
public enum TokenizerFiles {
    /// The word that names the byte tokenizer where a path is expected.
    public static let byteTokenizerName = "bytes"
    /// The files a Hugging Face tokenizer directory may hold; all that exist are copied into checkpoints, so
    /// `AutoTokenizer.from_pretrained` works on them too.
    public static let names = ["tokenizer.json", "vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json"]

    /// Whether `directory` holds a tokenizer (`tokenizer.json`, or `vocab.json` with `merges.txt`).
    public static func hasTokenizer(in directory: String) -> Bool {
        let manager = FileManager.default
        return manager.fileExists(atPath: directory + "/tokenizer.json")
            || (manager.fileExists(atPath: directory + "/vocab.json") && manager.fileExists(atPath: directory + "/merges.txt"))
    }

    /// The tokenizer files to copy with a model trained with the tokenizer at `path`, by file name: those of
    /// ``names`` in its directory (or the one file, when `path` is a `tokenizer.json`). None for `bytes`.
    public static func files(of path: String) throws -> [String: Data] {
        guard path != byteTokenizerName else { return [:] }
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else { return [:] }
        guard isDirectory.boolValue else {
            guard let contents = FileManager.default.contents(atPath: path) else { throw ConvoyError.io("cannot read the tokenizer \(path)") }
            return ["tokenizer.json": contents]
        }
        var files: [String: Data] = [:]
        for name in names {
            if let contents = FileManager.default.contents(atPath: path + "/" + name) { files[name] = contents }
        }
        return files
    }

    /// The tokenizer at `path` (see the type's description).
    ///
    /// Throws ``ConvoyTensor/ConvoyError/io(_:)`` when nothing is at `path` or a directory holds no tokenizer,
    /// and the loader's error when the files are malformed.
    public static func load(_ path: String) throws -> any TextTokenizer {
        if path == byteTokenizerName { return ByteTokenizer() }
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
            throw ConvoyError.io("tokenizer \(path) does not exist; give a tokenizer.json, a directory with tokenizer.json or vocab.json + merges.txt, or \(byteTokenizerName)")
        }
        if isDirectory.boolValue && !hasTokenizer(in: path) {
            throw ConvoyError.io("directory \(path) holds no tokenizer (no tokenizer.json, nor vocab.json with merges.txt)")
        }
        return try loadBytePairEncoding(path)
    }

    /// The tokenizer a checkpoint was trained with: the one whose files it holds, else the byte tokenizer.
    public static func tokenizer(ofCheckpoint directory: String) throws -> any TextTokenizer {
        hasTokenizer(in: directory) ? try load(directory) : ByteTokenizer()
    }

    /// The byte-level BPE loader (the tokenizer work's `TokenizerLoader`).
    private static func loadBytePairEncoding(_ path: String) throws -> any TextTokenizer {
        throw ConvoyError.incompatible("loading the BPE tokenizer at \(path) needs the byte-level BPE tokenizer, which this build does not have yet; use --tokenizer \(byteTokenizerName)")
    }
}
