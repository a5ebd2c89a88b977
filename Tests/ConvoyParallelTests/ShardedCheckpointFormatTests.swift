import ConvoyNN
import ConvoyParallel
import ConvoyTensor
import Foundation
import Testing

/// The sharded format below the trainer: lower-precision values with fp32 master weights, and a tensor
/// written as flat shards read back as other flat shards and as n-d boxes.
@Suite struct ShardedCheckpointFormatTests {
    func scratch() -> String { FileManager.default.temporaryDirectory.appendingPathComponent("convoy-format-\(UUID().uuidString)").path }

    /// Writes `slices` as one rank's checkpoint in `directory` and returns a reader of it.
    func save(_ slices: [CheckpointSlice], state: OptimizerState = OptimizerState(), to directory: String) throws -> ShardedCheckpointReader {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        try CheckpointShardWriter.write(slices: slices, optimizerState: state, rank: 0, of: 1, into: directory)
        let index = try CheckpointIndexAssembler.assemble(in: directory, ranks: 1, step: 1, samples: 8, layout: "test")
        try AtomicFile.write(try index.encoded(), to: directory + "/" + CheckpointIndex.fileName)
        return try ShardedCheckpointReader(directory: directory)
    }

    /// A 3×4 parameter held in bf16 with an fp32 master copy, saved as two ZeRO-like flat shards (0..<5, 5..<12)
    /// and loaded as two other shards (0..<7, 7..<12): masters come back exact, values as their bf16; a
    /// checkpoint without masters fills them from the values.
    @Test func masterWeightsRoundTripAcrossShardings() throws {
        let directory = scratch()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let shape = [3, 4]
        let masterValues = (0..<12).map { Float($0) * 0.1 + 0.013 }
        let master = Tensor(shape: [12], values: masterValues)
        let values = master.converted(to: .bfloat16)
        func slice(_ range: Range<Int>, values: Tensor, master: Tensor?) -> CheckpointSlice {
            CheckpointSlice(parameter: "w", globalShape: shape, boxes: TensorBox.boxes(coveringFlat: range, of: shape),
                            values: Tensor(storage: values.storage, shape: [range.count], offset: range.lowerBound), optimizerKey: "w[\(range)]",
                            isPrimaryCopy: true, distinctAlongDataParallel: true,
                            master: master.map { Tensor(storage: $0.storage, shape: [range.count], offset: range.lowerBound) })
        }
        let reader = try save([slice(0..<5, values: values, master: master), slice(5..<12, values: values, master: master)], to: directory + "/with")
        #expect(reader.index.tensors["master/w"]?.shape == shape && reader.index.tensors["w"]?.dtype == .bfloat16)
        let loadedValues = Tensor(uninitializedShape: [12], dtype: .bfloat16), loadedMaster = Tensor.zeros([12])
        let targets = [slice(0..<7, values: loadedValues, master: loadedMaster), slice(7..<12, values: loadedValues, master: loadedMaster)]
        _ = try reader.load(parametersInto: targets, optimizerStateOf: targets)
        #expect(loadedMaster.toArray() == masterValues)
        #expect(loadedValues.converted(to: .float32).toArray() == values.converted(to: .float32).toArray())

        // Saved without masters (a bf16 run's values only): the masters start from the values.
        let plain = try save([slice(0..<12, values: values, master: nil)], to: directory + "/without")
        let refilled = Tensor.zeros([12])
        let target = [slice(0..<12, values: Tensor(uninitializedShape: [12], dtype: .bfloat16), master: refilled)]
        _ = try plain.load(parametersInto: target, optimizerStateOf: target)
        #expect(refilled.toArray() == values.converted(to: .float32).toArray())
    }

    /// A 4×6 tensor stored as three flat shards reads back as any n-d box (a tensor-parallel shard's shape).
    @Test func flatShardsReadBackAsBoxes() throws {
        let directory = scratch()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let shape = [4, 6]
        let all = Tensor(shape: [24], values: (0..<24).map(Float.init))
        let slices = [0..<7, 7..<8, 8..<24].map { range in
            CheckpointSlice(parameter: "m", globalShape: shape, boxes: TensorBox.boxes(coveringFlat: range, of: shape),
                            values: Tensor(storage: all.storage, shape: [range.count], offset: range.lowerBound), optimizerKey: "m",
                            isPrimaryCopy: true, distinctAlongDataParallel: true)
        }
        let reader = try save(slices, to: directory)
        #expect(reader.index.tensors["m"]?.pieces.count == 5)
        for box in [TensorBox(offsets: [0, 3], shape: [4, 3]), TensorBox(offsets: [1, 1], shape: [2, 4]), TensorBox(whole: shape)] {
            let region = Tensor(uninitializedShape: box.shape)
            try reader.read("m", shape: shape, boxes: [box], into: region)
            var expected: [Float] = []
            for row in box.offsets[0]..<(box.offsets[0] + box.shape[0]) {
                for column in box.offsets[1]..<(box.offsets[1] + box.shape[1]) { expected.append(Float(row * 6 + column)) }
            }
            #expect(region.toArray() == expected, "\(box)")
        }
    }
}
