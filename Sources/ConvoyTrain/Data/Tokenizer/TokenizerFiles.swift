import ConvoyTensor
import Foundation

/// The tokenizer files that travel with a model: which a directory holds, copying them into a checkpoint (so
/// `AutoTokenizer.from_pretrained`, `convoy generate` and `convoy eval` read the text as it was trained), and
/// the tokenizer a checkpoint was trained with. Reading the files is ``TokenizerLoader``'s.
public enum TokenizerFiles {
    /// Files of a Hugging Face tokenizer directory besides the tokenizer itself, copied along when present.
    public static let companionNames = ["tokenizer_config.json", "special_tokens_map.json", "added_tokens.json"]

    /// Whether `directory` holds a tokenizer (`tokenizer.json`, or `vocab.json` with `merges.txt`).
    public static func hasTokenizer(in directory: String) -> Bool {
        let manager = FileManager.default
        return manager.fileExists(atPath: directory + "/tokenizer.json")
            || (manager.fileExists(atPath: directory + "/vocab.json") && manager.fileExists(atPath: directory + "/merges.txt"))
    }

    /// The files to copy with a model trained with the tokenizer at `path`, by the name they take in a model
    /// directory: its `tokenizer.json` (whatever the file was called) or `vocab.json` + `merges.txt`, and, from
    /// a directory, the companions present. None for `bytes`.
    public static func files(of path: String) throws -> [String: Data] {
        guard path != TokenizerLoader.byteTokenizerName else { return [:] }
        let sources = try TokenizerLoader.files(at: path)
        var files: [String: Data] = [:]
        for source in sources {
            guard let contents = FileManager.default.contents(atPath: source) else { throw ConvoyError.io("cannot read the tokenizer file \(source)") }
            let name = URL(fileURLWithPath: source).lastPathComponent
            files[sources.count == 1 ? "tokenizer.json" : name] = contents
        }
        var isDirectory: ObjCBool = false
        if FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory), isDirectory.boolValue {
            for name in companionNames {
                if let contents = FileManager.default.contents(atPath: path + "/" + name) { files[name] = contents }
            }
        }
        return files
    }

    /// The tokenizer a checkpoint was trained with: the one whose files it holds, else the byte tokenizer.
    public static func tokenizer(ofCheckpoint directory: String) throws -> any TextTokenizer {
        try TokenizerLoader.load(path: hasTokenizer(in: directory) ? directory : nil)
    }
}
