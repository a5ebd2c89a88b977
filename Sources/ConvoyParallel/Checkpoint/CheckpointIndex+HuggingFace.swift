import ConvoyNN
import ConvoyTensor
import Foundation

extension CheckpointIndex {
    /// An index over a Hugging Face GPT-2 directory's `model.safetensors`: each weight is one piece, the
    /// whole tensor, at its bytes in that file, named as Convoy names the parameter. A
    /// ``ShardedCheckpointReader`` over the directory with this index reads every rank's part of every
    /// weight straight from the Hugging Face file, under any layout — the same path as resuming a
    /// checkpoint, with no conversion written to disk. The step is 0 and there is no optimizer state.
    ///
    /// Buffers GPT-2 files may hold (`attn.bias`, `attn.masked_bias`) and the tied `lm_head.weight` carry no
    /// weights of their own and are left out. Reading the pieces' checksums reads the file once.
    ///
    /// - Throws: ``ConvoyTensor/ConvoyError/malformedFile(path:reason:)`` for an invalid safetensors header or
    ///   a name given twice; ``ConvoyTensor/ConvoyError/incompatible(_:)`` for F16 weights.
    public init(huggingFaceDirectory directory: String) throws {
        let file = GPTCheckpoint.weightsFileName
        let path = directory + "/" + file
        guard let handle = FileHandle(forReadingAtPath: path) else {
            throw ConvoyError.io("cannot open \(path); a Hugging Face GPT-2 directory holds model.safetensors and config.json")
        }
        defer { try? handle.close() }
        var tensors: [String: Entry] = [:]
        for location in try SafeTensors.locations(inFileAt: path) {
            let name = GPTCheckpoint.convoyName(of: location.name)
            if name == "lm_head.weight" || name.hasSuffix(".attn.bias") || name.hasSuffix(".attn.masked_bias") { continue }
            guard tensors[name] == nil else { throw ConvoyError.malformedFile(path: path, reason: "tensor '\(name)' appears twice (with and without the 'transformer.' prefix)") }
            let dtype: DType
            switch location.storage {
            case .f32: dtype = .float32
            case .bf16: dtype = .bfloat16
            case .f16: throw ConvoyError.incompatible("\(path) stores '\(location.name)' as F16; Convoy starts from F32 or BF16 weights. Save the model in float32 (model.float().save_pretrained) and try again")
            }
            let bytes: Data
            do {
                try handle.seek(toOffset: UInt64(location.bytes.lowerBound))
                bytes = try handle.read(upToCount: location.bytes.count) ?? Data()
            } catch {
                throw ConvoyError.io("cannot read \(path): \(error.localizedDescription)")
            }
            guard bytes.count == location.bytes.count else { throw ConvoyError.malformedFile(path: path, reason: "ends inside tensor '\(location.name)'") }
            let piece = Piece(file: file, key: location.name, box: TensorBox(whole: location.shape), byteStart: location.bytes.lowerBound,
                              byteEnd: location.bytes.upperBound, checksum: bytes.withUnsafeBytes { PieceChecksum.hex($0) })
            tensors[name] = Entry(role: .parameter, parameter: name, state: nil, shape: location.shape, dtype: dtype, pieces: [piece])
        }
        self.init(step: 0, samples: 0, optimizerScalars: [:], layout: "Hugging Face GPT-2 directory", ranks: 1, tensors: tensors)
    }
}
