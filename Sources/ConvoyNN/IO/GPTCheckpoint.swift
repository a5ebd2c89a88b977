import ConvoyTensor
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A GPT checkpoint directory in Hugging Face GPT-2 form: `model.safetensors` + `config.json`, loadable by
/// `transformers.GPT2LMHeadModel.from_pretrained(dir)` with no missing or unexpected keys.
///
/// Tensor names are GPT-2's (`transformer.wte.weight`, `transformer.h.{i}.attn.c_attn.weight`, …); linear
/// weights are stored [in, out] (Conv1D layout, which is also Convoy's); the tied LM head is not stored.
public enum GPTCheckpoint {
    /// File names inside a checkpoint directory.
    public static let weightsFileName = "model.safetensors"
    public static let configFileName = "config.json"
    /// The prefix GPT-2's `GPT2LMHeadModel` puts before the backbone's parameter names.
    static let namePrefix = "transformer."

    /// Writes the model into `directory` (created if missing). Each file is replaced atomically.
    public static func save(_ model: GPT, to directory: String) throws {
        let named = Dictionary(uniqueKeysWithValues: model.namedParameters())
        try export(model.configuration, parameters: model.namedParameters().map { ($0.name, $0.parameter.shape, $0.parameter.dtype) }, to: directory) { named[$0]!.detached() }
    }

    /// Writes a GPT of `configuration` whose parameters (Convoy names and shapes) take their values from
    /// `tensor(name)`, one at a time, into `directory` (created if missing): tensors in name order, as
    /// ``save(_:to:)`` always wrote them. Each file is replaced atomically.
    public static func export(_ configuration: GPTConfiguration, parameters: [(name: String, shape: [Int], dtype: DType)], to directory: String,
                              tensor: (String) throws -> Tensor) throws {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let ordered = parameters.sorted { namePrefix + $0.name < namePrefix + $1.name }
        let path = directory + "/" + weightsFileName
        let temporary = directory + "/.\(weightsFileName).tmp-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        defer { unlink(temporary) }
        try SafeTensorsFileWriter.write(ordered.map { SafeTensorsFileWriter.Entry(name: namePrefix + $0.name, dtype: $0.dtype, shape: $0.shape) },
                                        metadata: ["format": "pt"], to: temporary) { try tensor(ordered[$0].name).converted(to: ordered[$0].dtype) }
        guard rename(temporary, path) == 0 else { throw ConvoyError.io("renaming \(temporary) to \(path) failed: \(String(cString: strerror(errno)))") }
        try AtomicFile.syncDirectory(directory)
        try AtomicFile.write(try configJSON(configuration), to: directory + "/" + configFileName)
    }

    /// GPT-2's `config.json` for a configuration.
    public static func configJSON(_ configuration: GPTConfiguration) throws -> Data {
        let object: [String: Any] = [
            "model_type": "gpt2",
            "architectures": ["GPT2LMHeadModel"],
            "vocab_size": configuration.vocabularySize,
            "n_positions": configuration.contextLength,
            "n_embd": configuration.width,
            "n_layer": configuration.layers,
            "n_head": configuration.heads,
            "n_inner": NSNull(),
            "activation_function": "gelu_new",
            "layer_norm_epsilon": Double(configuration.layerNormEpsilon),
            "resid_pdrop": Double(configuration.residualDropout),
            "embd_pdrop": Double(configuration.embeddingDropout),
            "attn_pdrop": Double(configuration.attentionDropout),
            "initializer_range": 0.02,
            "scale_attn_weights": true,
            "scale_attn_by_inverse_layer_idx": false,
            "reorder_and_upcast_attn": false,
            "tie_word_embeddings": true,
            "bos_token_id": NSNull(),
            "eos_token_id": NSNull(),
            "use_cache": true,
        ]
        return try JSONSerialization.data(withJSONObject: object, options: [.prettyPrinted, .sortedKeys])
    }

    /// Reads a configuration from GPT-2's `config.json`, refusing features Convoy's GPT does not implement.
    public static func readConfiguration(from directory: String) throws -> GPTConfiguration {
        let path = directory + "/" + configFileName
        guard let data = FileManager.default.contents(atPath: path) else {
            throw ConvoyError.io("cannot read \(path): is \(directory) a checkpoint directory?")
        }
        guard let object = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any] else {
            throw ConvoyError.malformedFile(path: path, reason: "not a JSON object")
        }
        func malformed(_ reason: String) -> ConvoyError { .malformedFile(path: path, reason: reason) }
        func integer(_ key: String, default value: Int? = nil) throws -> Int {
            guard let raw = object[key] else {
                if let value { return value }
                throw malformed("missing key '\(key)'")
            }
            guard let number = raw as? NSNumber, let result = Int(exactly: number.doubleValue) else { throw malformed("'\(key)' must be an integer") }
            return result
        }
        func real(_ key: String, default value: Double) throws -> Float {
            guard let raw = object[key], !(raw is NSNull) else { return Float(value) }
            guard let number = raw as? NSNumber else { throw malformed("'\(key)' must be a number") }
            return number.floatValue
        }
        if let type = object["model_type"] as? String, type != "gpt2" {
            throw ConvoyError.incompatible("\(path) describes a '\(type)' model; Convoy loads GPT-2 ('gpt2') checkpoints")
        }
        let activation = object["activation_function"] as? String ?? "gelu_new"
        guard ["gelu_new", "gelu_pytorch_tanh"].contains(activation) else {
            throw ConvoyError.incompatible("activation_function '\(activation)' is not supported; Convoy's GPT uses GELU with the tanh approximation ('gelu_new')")
        }
        if let tied = object["tie_word_embeddings"] as? Bool, !tied {
            throw ConvoyError.incompatible("tie_word_embeddings is false; Convoy's GPT ties the LM head to the token embedding")
        }
        let width = try integer("n_embd")
        if let inner = object["n_inner"], !(inner is NSNull), (inner as? NSNumber)?.intValue != 4 * width {
            throw ConvoyError.incompatible("n_inner \(inner) is not supported; Convoy's MLP is 4·n_embd wide")
        }
        if (object["scale_attn_by_inverse_layer_idx"] as? Bool) == true || (object["scale_attn_weights"] as? Bool) == false {
            throw ConvoyError.incompatible("only standard attention scaling (1/sqrt(head size)) is supported")
        }
        let configuration = GPTConfiguration(
            vocabularySize: try integer("vocab_size"),
            contextLength: try integer("n_positions"),
            layers: try integer("n_layer"),
            heads: try integer("n_head"),
            width: width,
            embeddingDropout: try real("embd_pdrop", default: 0.1),
            attentionDropout: try real("attn_pdrop", default: 0.1),
            residualDropout: try real("resid_pdrop", default: 0.1),
            layerNormEpsilon: try real("layer_norm_epsilon", default: 1e-5))
        do { try configuration.validate() } catch { throw malformed("\(error)") }
        return configuration
    }

    /// The Convoy name of a tensor named `name` in a GPT-2 file (with or without the `transformer.` prefix).
    public static func convoyName(of name: String) -> String {
        name.hasPrefix(namePrefix) ? String(name.dropFirst(namePrefix.count)) : name
    }

    /// Loads a checkpoint directory into a new model.
    public static func load(from directory: String) throws -> GPT {
        let model = try GPT(readConfiguration(from: directory), seed: 0)
        try loadWeights(into: model, from: directory)
        return model
    }

    /// Replaces a model's weights by a checkpoint's. Every tensor is validated before any parameter is
    /// touched, so a bad file leaves the model as it was.
    public static func loadWeights(into model: GPT, from directory: String) throws {
        let path = directory + "/" + weightsFileName
        let file = try SafeTensors.read(contentsOf: path)
        var byName: [String: Tensor] = [:]
        for (rawName, tensor) in file.tensors {
            let name = convoyName(of: rawName)
            // Buffers GPT-2 may store, and the tied head, carry no independent weights.
            if name == "lm_head.weight" || name.hasSuffix(".attn.bias") || name.hasSuffix(".attn.masked_bias") { continue }
            guard byName[name] == nil else { throw ConvoyError.malformedFile(path: path, reason: "tensor '\(name)' appears twice (with and without the 'transformer.' prefix)") }
            byName[name] = tensor
        }
        var staged: [(Parameter, Tensor)] = []
        for (name, parameter) in model.namedParameters() {
            guard let tensor = byName.removeValue(forKey: name) else {
                throw ConvoyError.incompatible("\(path) has no tensor '\(namePrefix + name)'; it was not saved from a GPT of this shape")
            }
            guard tensor.shape == parameter.shape else {
                throw ConvoyError.incompatible("tensor '\(namePrefix + name)' in \(path) has shape \(tensor.shape), the model expects \(parameter.shape)")
            }
            try FiniteValues.check(tensor, name: namePrefix + name, in: path)
            staged.append((parameter, tensor.converted(to: .float32)))
        }
        if let unexpected = byName.keys.sorted().first {
            throw ConvoyError.incompatible("\(path) has an unexpected tensor '\(unexpected)' (\(byName.count) unexpected in all); it does not belong to a GPT-2 of this shape")
        }
        withNoGrad {
            for (parameter, tensor) in staged { parameter.assign(tensor) }
        }
    }
}
