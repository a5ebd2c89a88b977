import ArgumentParser
import ConvoyTensor
import ConvoyTrain
import Foundation

/// `convoy tokenize`: standard input to token ids, or with `--decode` ids back to the exact bytes.
struct TokenizeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tokenize",
        abstract: "Encode standard input to token ids (or, with --decode, ids to text).",
        discussion: """
            The tokenizer is a tokenizer.json, a vocab.json with merges.txt beside it, a directory holding either \
            (such as a Hugging Face model directory), or "bytes". Ids are printed space-separated (or as a JSON \
            array with --json); --decode reads ids separated by spaces, commas or newlines (a JSON array too) and \
            writes their bytes exactly, invalid UTF-8 included.
            """)

    @Option(help: "tokenizer.json, vocab.json, a directory holding either, or bytes.") var tokenizer: String
    @Flag(help: "Read ids from standard input and print their text.") var decode = false
    @Flag(help: "Print the ids as a JSON array.") var json = false

    func validate() throws {
        if decode && json { throw ValidationError("--json formats ids; with --decode the output is text, so leave out --json") }
    }

    func run() throws {
        let tokenizer = try TokenizerLoader.load(path: tokenizer)
        let input: [UInt8]
        do {
            input = [UInt8](try FileHandle.standardInput.readToEnd() ?? Data())
        } catch {
            throw ConvoyError.io("cannot read standard input: \(error.localizedDescription)")
        }
        if decode {
            try StandardOutput.write(tokenizer.decodeBytes(try Self.parseIDs(input, vocabularySize: tokenizer.vocabularySize)))
            return
        }
        let ids = tokenizer.encodeInParallel(bytes: input, pool: ComputePool.shared)
        var output: [UInt8] = []
        output.reserveCapacity(ids.count * 6 + 2)
        if json { output.append(UInt8(ascii: "[")) }
        for (index, id) in ids.enumerated() {
            if index > 0 { output.append(UInt8(ascii: json ? "," : " ")) }
            output.append(contentsOf: String(id).utf8)
        }
        if json { output.append(UInt8(ascii: "]")) }
        output.append(UInt8(ascii: "\n"))
        try StandardOutput.write(output)
    }

    /// Ids separated by whitespace or commas, optionally inside `[` `]`.
    static func parseIDs(_ text: [UInt8], vocabularySize: Int) throws -> [Int32] {
        var ids: [Int32] = []
        var value: Int?
        func finish() throws {
            guard let current = value else { return }
            guard current < vocabularySize else {
                throw ConvoyError.invalidArgument("id \(current) (token \(ids.count + 1) of the input) is outside the tokenizer's vocabulary of \(vocabularySize)")
            }
            ids.append(Int32(current))
            value = nil
        }
        for byte in text {
            switch byte {
            case UInt8(ascii: "0")...UInt8(ascii: "9"):
                let next = (value ?? 0) * 10 + Int(byte - UInt8(ascii: "0"))
                value = min(next, Int(Int32.max))
            case UInt8(ascii: " "), UInt8(ascii: "\t"), UInt8(ascii: "\n"), UInt8(ascii: "\r"), UInt8(ascii: ","), UInt8(ascii: "["), UInt8(ascii: "]"):
                try finish()
            default:
                let shown = byte >= 0x20 && byte < 0x7F ? "'\(Character(Unicode.Scalar(byte)))'" : "byte 0x" + String(byte, radix: 16)
                throw ConvoyError.invalidArgument("--decode reads token ids (digits separated by spaces, commas or newlines), but the input has \(shown) after \(ids.count) ids")
            }
        }
        try finish()
        return ids
    }
}
