import ConvoyTensor
import Foundation

/// A dataset over the tokens of one text file: its bytes (the byte tokenizer, vocabulary 256, held in memory),
/// or the ids of a memory-mapped token file from the token cache (any tokenizer, corpora larger than RAM).
///
/// The first `1 − validationFraction` of the tokens are the training part and the rest the validation part,
/// so no window straddles both. Training example `i` is a window of `contextLength + 1` tokens at an offset
/// drawn from (seed, `i`) alone, uniform over every start that fits in the training part; validation examples
/// are consecutive non-overlapping windows of the validation part, so evaluation sees the same sequences every
/// time and each validation token at most once as an input. Both kinds of token source give the same examples
/// for the same ids.
public struct TextDataset: TrainingDataset {
    /// The file path (or the name given with raw bytes), for messages and the summary.
    public let name: String
    public let contextLength: Int
    public let seed: UInt64
    /// The share of the bytes held out for validation, in 0 ... 0.5.
    public let validationFraction: Double
    /// Tokens in the training part (the file's first tokens; bytes with the byte tokenizer).
    public let trainingTokenCount: Int
    /// Tokens in the validation part (the file's last tokens).
    public var validationTokenCount: Int { tokens.count - trainingTokenCount }

    private let tokens: TextTokens
    /// What one token is, in messages and the summary: "byte", or the tokenizer's tokens.
    private let unit: String
    private let offsetStream: PhiloxRandom

    /// Reads the whole file at `path`.
    ///
    /// Throws ``ConvoyTensor/ConvoyError/io(_:)`` when the file cannot be read, and
    /// ``ConvoyTensor/ConvoyError/invalidConfiguration(_:)`` when it is too short for the context and
    /// validation fraction (see ``init(bytes:name:contextLength:seed:validationFraction:)``).
    public init(path: String, contextLength: Int, seed: UInt64, validationFraction: Double = 0.1) throws {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
            throw ConvoyError.io("text dataset \(path) does not exist; check the --data path")
        }
        guard !isDirectory.boolValue else {
            throw ConvoyError.io("text dataset \(path) is a directory; give the path of one text file")
        }
        // A FIFO, socket or device would block or never end; only a regular file has a length to split.
        var status = stat()
        if stat(path, &status) == 0, status.st_mode & S_IFMT != S_IFREG {
            throw ConvoyError.io("text dataset \(path) is not a regular file (it is a \(Self.fileKind(status.st_mode))); give the path of one text file")
        }
        let contents: Data
        do {
            contents = try Data(contentsOf: URL(fileURLWithPath: path))
        } catch {
            throw ConvoyError.io("cannot read text dataset \(path): \(RunDirectory.reason(error))")
        }
        try self.init(bytes: [UInt8](contents), name: path, contextLength: contextLength, seed: seed,
                      validationFraction: validationFraction)
    }

    /// A dataset over `bytes`; `name` stands for them in messages and the summary.
    ///
    /// Throws ``ConvoyTensor/ConvoyError/invalidConfiguration(_:)`` when the bytes are empty, the context is
    /// not positive, the validation fraction is outside 0 ... 0.5, the training part is shorter than one
    /// window (`contextLength + 1` bytes), or a non-zero validation fraction leaves a validation part too short
    /// for one window.
    public init(bytes: [UInt8], name: String, contextLength: Int, seed: UInt64, validationFraction: Double = 0.1) throws {
        try self.init(tokens: .bytes(bytes), unit: "byte", name: name, contextLength: contextLength, seed: seed, validationFraction: validationFraction)
    }

    /// A dataset over the ids of a mapped token file; `name` (the corpus path) stands for them in messages.
    /// The same checks as ``init(bytes:name:contextLength:seed:validationFraction:)``, counted in tokens.
    public init(tokens: MappedTokenFile, name: String, contextLength: Int, seed: UInt64, validationFraction: Double = 0.1) throws {
        try self.init(tokens: .mapped(tokens), unit: "token", name: name, contextLength: contextLength, seed: seed, validationFraction: validationFraction)
    }

    private init(tokens: TextTokens, unit: String, name: String, contextLength: Int, seed: UInt64, validationFraction: Double) throws {
        let count = tokens.count
        guard contextLength > 0 else {
            throw ConvoyError.invalidConfiguration("--context must be positive, got \(contextLength)")
        }
        guard validationFraction >= 0, validationFraction <= 0.5 else {
            throw ConvoyError.invalidConfiguration(
                "validation fraction \(validationFraction) for \(name) is outside 0 ... 0.5; use e.g. 0.1, or 0 for no validation")
        }
        guard count > 0 else {
            throw ConvoyError.invalidConfiguration(
                "text dataset \(name) is empty; give a text file with at least \(contextLength + 1) \(unit)s for --context \(contextLength)")
        }
        let window = contextLength + 1
        // A non-zero fraction always keeps at least one validation token, so "0.1 of a tiny file" is reported
        // as too short rather than silently meaning "no validation".
        let validationBytes = validationFraction == 0
            ? 0 : min(count, max(1, Int((Double(count) * validationFraction).rounded())))
        let trainingBytes = count - validationBytes
        guard trainingBytes >= window else {
            let neededTotal = validationFraction == 0
                ? window : Int((Double(window) / (1 - validationFraction)).rounded(.up))
            throw ConvoyError.invalidConfiguration(
                "text dataset \(name) has \(trainingBytes) training \(unit)s (of \(count)); the training part needs at least \(window) \(unit)s for --context \(contextLength); use a smaller --context or a file of at least \(neededTotal) \(unit)s")
        }
        guard validationFraction == 0 || validationBytes >= window else {
            throw ConvoyError.invalidConfiguration(
                "the validation part of text dataset \(name) has \(validationBytes) \(unit)s (validation fraction \(validationFraction)), too short for one window of \(window) \(unit)s at --context \(contextLength); use a smaller --context, a larger validation fraction (at most 0.5), or validation fraction 0 to skip validation")
        }
        self.name = name
        self.contextLength = contextLength
        self.seed = seed
        self.validationFraction = validationFraction
        self.trainingTokenCount = trainingBytes
        self.tokens = tokens
        self.unit = unit
        self.offsetStream = PhiloxRandom(seed: seed, stream: PhiloxRandom.streamID("text.train-offsets"))
    }

    /// Number of distinct window starts in the training part.
    private var trainingStarts: Int { trainingTokenCount - contextLength }

    /// Where training window `index` starts, from (seed, index) alone.
    public func trainingOffset(_ index: Int) -> Int {
        precondition(index >= 0, "training example index must be non-negative, got \(index)")
        let words = offsetStream.block(UInt64(index))
        let random = UInt64(words.0) << 32 | UInt64(words.1)
        // The high word of random × starts is uniform up to a bias of starts / 2^64, unlike `random % starts`
        // which would need the same rejection for large files.
        return Int(random.multipliedFullWidth(by: UInt64(trainingStarts)).high)
    }

    private func example(windowStart start: Int) -> TrainingExample {
        let window = tokens.window(from: start, count: contextLength + 1)
        return TrainingExample(inputs: Array(window.dropLast()), targets: Array(window.dropFirst()))
    }

    public func trainingExample(_ index: Int) -> TrainingExample {
        example(windowStart: trainingOffset(index))
    }

    /// Windows that fit in the validation part: each takes `contextLength` new tokens plus the next one as
    /// its last target.
    public var validationCount: Int {
        validationTokenCount == 0 ? 0 : (validationTokenCount - 1) / contextLength
    }

    public func validationExample(_ index: Int) -> TrainingExample {
        precondition(index >= 0 && index < validationCount, "validation example \(index) is outside 0..<\(validationCount)")
        return example(windowStart: trainingTokenCount + index * contextLength)
    }

    public var summary: String {
        let (divisor, prefix) = Self.prefix(for: tokens.count)
        func format(_ count: Int) -> String {
            let number = divisor == 1 ? "\(count)" : String(format: "%.1f", Double(count) / divisor)
            return unit == "byte" ? number + " " + prefix + "B" : number + prefix + " tokens"
        }
        return "\(name): \(format(tokens.count)) (\(format(trainingTokenCount)) train, \(format(validationTokenCount)) validation)"
    }

    /// One decimal prefix for all three sizes of the summary, chosen by the total so the parts read against it.
    private static func prefix(for count: Int) -> (Double, String) {
        if count >= 1_000_000_000 { return (1e9, "G") }
        if count >= 1_000_000 { return (1e6, "M") }
        if count >= 1_000 { return (1e3, "K") }
        return (1, "")
    }
}

extension TextDataset {
    /// The kind of a file that is not a regular one, in words (from `stat`'s mode).
    static func fileKind(_ mode: mode_t) -> String {
        switch mode & S_IFMT {
        case S_IFIFO: return "FIFO (named pipe)"
        case S_IFCHR: return "character device"
        case S_IFBLK: return "block device"
        case S_IFSOCK: return "socket"
        default: return "special file"
        }
    }
}
