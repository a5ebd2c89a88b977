import ConvoyNN
import ConvoyTensor
import Foundation
import Testing

func fixturePath(_ relative: String) -> String {
    Bundle.module.resourceURL!.appendingPathComponent("Fixtures/" + relative).path
}

func temporaryDirectory(_ label: String) throws -> String {
    let path = FileManager.default.temporaryDirectory.appendingPathComponent("convoy-\(label)-\(UUID().uuidString)").path
    try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    return path
}

@Suite struct GPTCheckpointTests {
    /// transformers' `save_pretrained` output for a 2-layer GPT-2 with a 256-token vocabulary, and the
    /// logits and loss transformers computed for fixed inputs (scripts/hf_compat.py make-fixture).
    @Test func loadsAHuggingFaceDirectoryAndReproducesItsLogits() throws {
        let directory = fixturePath("hf-gpt2-tiny")
        let model = try GPTCheckpoint.load(from: directory)
        #expect(model.configuration == GPTConfiguration(vocabularySize: 256, contextLength: 32, layers: 2, heads: 4, width: 32))
        let reference = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: directory + "/reference.json"))) as! [String: Any]
        let inputs = (reference["input_ids"] as! [[NSNumber]]).map { $0.map { Int32($0.intValue) } }
        let expected = (reference["logits"] as! [[[NSNumber]]]).flatMap { $0.flatMap { $0.map(\.floatValue) } }
        let batch = inputs.count, time = inputs[0].count
        let logits = model.logits(inputs.flatMap { $0 }, batch: batch, time: time).toArray()
        let worst = zip(logits, expected).map { abs($0 - $1) }.max()!
        #expect(worst < 1e-4, "max |Convoy − transformers| = \(worst)")
        // transformers' loss shifts labels by one inside each sequence.
        var shiftedInputs: [Int32] = [], shiftedTargets: [Int32] = []
        for sequence in inputs {
            shiftedInputs += sequence
            shiftedTargets += Array(sequence.dropFirst()) + [Tensor.ignoredTarget]
        }
        let loss = model.loss(shiftedInputs, targets: shiftedTargets, batch: batch, time: time).scalarValue
        let expectedLoss = (reference["loss"] as! NSNumber).floatValue
        #expect(abs(loss - expectedLoss) < 1e-4)
    }

    @Test func savedDirectoryIsGPT2ShapedAndRoundTrips() throws {
        let configuration = GPTConfiguration(vocabularySize: 256, contextLength: 16, layers: 2, heads: 2, width: 16, attentionDropout: 0.1)
        let model = try GPT(configuration, seed: 4)
        let directory = try temporaryDirectory("roundtrip")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        try GPTCheckpoint.save(model, to: directory)

        let file = try SafeTensors.read(contentsOf: directory + "/model.safetensors")
        #expect(file.tensors.count == 4 + 12 * 2)
        #expect(file.tensors["transformer.wte.weight"]?.shape == [256, 16])
        #expect(file.tensors["transformer.h.1.attn.c_attn.weight"]?.shape == [16, 48])
        #expect(file.tensors["transformer.h.0.mlp.c_proj.weight"]?.shape == [64, 16])
        #expect(file.tensors["lm_head.weight"] == nil)
        #expect(file.tensors.values.allSatisfy { $0.dtype == .float32 })

        let config = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: directory + "/config.json"))) as! [String: Any]
        #expect(config["model_type"] as? String == "gpt2")
        #expect(config["activation_function"] as? String == "gelu_new")
        #expect((config["n_embd"] as? NSNumber)?.intValue == 16)
        #expect((config["n_layer"] as? NSNumber)?.intValue == 2)
        #expect((config["n_head"] as? NSNumber)?.intValue == 2)
        #expect((config["n_positions"] as? NSNumber)?.intValue == 16)
        #expect((config["vocab_size"] as? NSNumber)?.intValue == 256)
        #expect(config["tie_word_embeddings"] as? Bool == true)
        #expect(abs(((config["attn_pdrop"] as? NSNumber)?.doubleValue ?? -1) - 0.1) < 1e-6)
        #expect((config["resid_pdrop"] as? NSNumber)?.doubleValue == 0)
        #expect((config["layer_norm_epsilon"] as? NSNumber)?.doubleValue ?? 0 > 0)

        let loaded = try GPTCheckpoint.load(from: directory)
        #expect(loaded.configuration == configuration)
        for ((name, original), (_, restored)) in zip(model.namedParameters(), loaded.namedParameters()) {
            #expect(original.toArray() == restored.toArray(), "\(name) changed in the round trip")
        }
    }

    @Test func badCheckpointsAreRefusedAndLeaveTheModelUntouched() throws {
        let configuration = GPTConfiguration(vocabularySize: 256, contextLength: 16, layers: 1, heads: 2, width: 16)
        let model = try GPT(configuration, seed: 1)
        let before = model.parameters.map { $0.toArray() }
        let good = try temporaryDirectory("good")
        defer { try? FileManager.default.removeItem(atPath: good) }
        try GPTCheckpoint.save(try GPT(configuration, seed: 2), to: good)
        let weights = try Data(contentsOf: URL(fileURLWithPath: good + "/model.safetensors"))

        func variant(_ label: String, _ edit: (String) throws -> Void) throws -> String {
            let directory = try temporaryDirectory(label)
            try FileManager.default.copyItem(atPath: good + "/config.json", toPath: directory + "/config.json")
            try weights.write(to: URL(fileURLWithPath: directory + "/model.safetensors"))
            try edit(directory)
            return directory
        }
        func expectRefusal(_ directory: String, mentioning words: String) {
            defer { try? FileManager.default.removeItem(atPath: directory) }
            do {
                try GPTCheckpoint.loadWeights(into: model, from: directory)
                Issue.record("loading \(directory) should have failed")
            } catch {
                #expect("\(error)".contains(words), "error '\(error)' should mention '\(words)'")
            }
            #expect(model.parameters.map { $0.toArray() } == before, "a refused checkpoint changed the model")
        }

        expectRefusal(try variant("truncated") { directory in
            try weights.prefix(weights.count / 2).write(to: URL(fileURLWithPath: directory + "/model.safetensors"))
        }, mentioning: "malformed")

        expectRefusal(try variant("missing") { directory in
            var file = try SafeTensors.read(contentsOf: directory + "/model.safetensors")
            file.tensors["transformer.h.0.attn.c_proj.bias"] = nil
            try file.write(to: directory + "/model.safetensors")
        }, mentioning: "transformer.h.0.attn.c_proj.bias")

        expectRefusal(try variant("shape") { directory in
            var file = try SafeTensors.read(contentsOf: directory + "/model.safetensors")
            file.tensors["transformer.ln_f.weight"] = Tensor.ones([17])
            try file.write(to: directory + "/model.safetensors")
        }, mentioning: "shape")

        expectRefusal(try variant("unexpected") { directory in
            var file = try SafeTensors.read(contentsOf: directory + "/model.safetensors")
            file.tensors["transformer.h.7.ln_1.weight"] = Tensor.ones([16])
            try file.write(to: directory + "/model.safetensors")
        }, mentioning: "unexpected tensor 'h.7.ln_1.weight'")

        // A checkpoint of another shape is refused by its config before any weight is read.
        let other = try temporaryDirectory("other")
        defer { try? FileManager.default.removeItem(atPath: other) }
        try GPTCheckpoint.save(try GPT(GPTConfiguration(vocabularySize: 256, contextLength: 16, layers: 2, heads: 2, width: 16), seed: 1), to: other)
        expectRefusal(other, mentioning: "unexpected tensor")

        let badConfig = try temporaryDirectory("config")
        defer { try? FileManager.default.removeItem(atPath: badConfig) }
        try Data("{\"model_type\": \"gpt2\", \"n_embd\": 16}".utf8).write(to: URL(fileURLWithPath: badConfig + "/config.json"))
        #expect(throws: ConvoyError.self) { try GPTCheckpoint.load(from: badConfig) }
        try Data("{\"model_type\": \"llama\"}".utf8).write(to: URL(fileURLWithPath: badConfig + "/config.json"))
        #expect(throws: ConvoyError.self) { try GPTCheckpoint.load(from: badConfig) }
    }
}
