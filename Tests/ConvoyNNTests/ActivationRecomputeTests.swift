import ConvoyNN
import ConvoyTensor
import Testing

/// Activation recompute in GPT: selective (the attention core) and full (whole blocks), for all blocks or
/// the first N, give bit-identical losses and gradients with dropout on, in fp32 and bf16.
@Suite struct ActivationRecomputeTests {
    static func gradients(_ recompute: ActivationRecompute, precision: DType) throws -> [[UInt32]] {
        let configuration = GPTConfiguration(vocabularySize: 40, contextLength: 9, layers: 3, heads: 2, width: 16,
                                             embeddingDropout: 0.1, attentionDropout: 0.2, residualDropout: 0.15)
        let model = try GPT(configuration, seed: 11)
        let tokens = (0..<27).map { Int32($0 * 7 % 40) }, targets = (0..<27).map { Int32($0 * 5 % 40) }
        let context = ForwardContext(training: true, seed: 3, step: 4, firstSequence: 2, recompute: recompute)
        let loss = ComputePrecision.with(precision) { model.loss(tokens, targets: targets, batch: 3, time: 9, context: context) }
        try ComputePrecision.with(precision) { try loss.backward() }
        return [loss.toArray().map(\.bitPattern)] + model.parameters.map { $0.grad!.toArray().map(\.bitPattern) }
    }

    @Test(arguments: [DType.float32, .bfloat16])
    func recomputeGivesBitIdenticalGradientsWithDropout(precision: DType) throws {
        let reference = try Self.gradients(ActivationRecompute(), precision: precision)
        for granularity in [ActivationRecompute.Granularity.selective, .full] {
            for layers in [nil, 1] as [Int?] {
                let recomputed = try Self.gradients(ActivationRecompute(granularity: granularity, layers: layers), precision: precision)
                #expect(recomputed == reference, "\(granularity) layers \(layers.map(String.init) ?? "all") at \(precision)")
            }
        }
    }

    @Test func recomputeLayersSelectsTheFirstBlocks() {
        let recompute = ActivationRecompute(granularity: .full, layers: 2)
        #expect((0..<4).map { recompute.granularity(ofLayer: $0) } == [.full, .full, .none, .none])
        #expect(ActivationRecompute(granularity: .selective).granularity(ofLayer: 7) == .selective)
    }
}
