import ConvoyNN
import ConvoyTensor
import Foundation
import Testing

/// The same GPT-2 network written with primitive operations only (matmul, add, softmax with an additive
/// mask, layer norm from mean/variance, GELU from tanh, cross-entropy from log-softmax), as an
/// independent reference for the fused kernels.
enum PrimitiveGPT {
    static func layerNorm(_ x: Tensor, _ norm: LayerNorm) -> Tensor {
        let mean = x.mean(axes: [-1], keepingDimensions: true)
        let centered = x - mean
        let variance = (centered * centered).mean(axes: [-1], keepingDimensions: true)
        return centered / (variance + norm.epsilon).sqrt() * norm.weight + norm.bias
    }

    static func linear(_ x: Tensor, _ layer: Linear) -> Tensor {
        x.matmul(layer.weight) + layer.bias!
    }

    static func gelu(_ x: Tensor) -> Tensor {
        let inner = (x + x * x * x * 0.044715) * Float((2 / Double.pi).squareRoot())
        return x * 0.5 * (inner.tanh() + 1)
    }

    static func attention(_ x: Tensor, _ layer: CausalSelfAttention, batch: Int, time: Int) -> Tensor {
        let width = x.shape[2], heads = layer.heads, headSize = width / heads
        let qkv = linear(x, layer.qkvProjection)
        let parts = qkv.split(axis: 2, sizes: [width, width, width]).map {
            $0.reshaped([batch, time, heads, headSize]).permuted([0, 2, 1, 3])
        }
        var maskValues = [Float](repeating: 0, count: time * time)
        for i in 0..<time { for j in (i + 1)..<max(time, i + 1) { maskValues[i * time + j] = -1e9 } }
        let mask = Tensor(shape: [time, time], values: maskValues)
        let scores = parts[0].matmul(parts[1].transposed()) * (1 / Float(headSize).squareRoot()) + mask
        let attended = scores.softmax().matmul(parts[2]).permuted([0, 2, 1, 3]).reshaped([batch, time, width])
        return linear(attended, layer.outputProjection)
    }

    static func logits(_ model: GPT, tokens: [Int32], batch: Int, time: Int) -> Tensor {
        var x = Tensor.embedding(model.tokenEmbedding.weight, indices: tokens, shape: [batch, time])
            + Tensor.embedding(model.positionEmbedding.weight, indices: Array(0..<Int32(time)), shape: [time])
        for block in model.blocks {
            x = x + attention(layerNorm(x, block.attentionNorm), block.attention, batch: batch, time: time)
            let hidden = gelu(linear(layerNorm(x, block.mlpNorm), block.mlp.fullyConnected))
            x = x + linear(hidden, block.mlp.projection)
        }
        return layerNorm(x, model.finalNorm).matmul(model.tokenEmbedding.weight.transposed())
    }

    static func loss(_ model: GPT, tokens: [Int32], targets: [Int32], batch: Int, time: Int) -> Tensor {
        let vocabulary = model.configuration.vocabularySize
        let logProbabilities = logits(model, tokens: tokens, batch: batch, time: time).logSoftmax().reshaped([-1, vocabulary])
        var oneHot = [Float](repeating: 0, count: targets.count * vocabulary)
        for (row, target) in targets.enumerated() { oneHot[row * vocabulary + Int(target)] = 1 }
        return -(logProbabilities * Tensor(shape: [targets.count, vocabulary], values: oneHot)).sum() / Float(targets.count)
    }
}

func sampleTokens(count: Int, vocabulary: Int, seed: UInt64) -> [Int32] {
    let generator = PhiloxRandom(seed: seed, stream: 7)
    return (0..<count).map { Int32(generator.block(UInt64($0)).0 % UInt32(vocabulary)) }
}

func maxRelativeDifference(_ a: [Float], _ b: [Float]) -> Float {
    precondition(a.count == b.count)
    let scale = max(a.map(abs).max() ?? 0, b.map(abs).max() ?? 0, 1e-12)
    return zip(a, b).map { abs($0 - $1) }.max()! / scale
}

@Suite struct GPTTests {
    let configuration = GPTConfiguration(vocabularySize: 64, contextLength: 16, layers: 2, heads: 4, width: 32)

    @Test func parameterNamesAreGPT2sInStableOrder() throws {
        let model = try GPT(configuration, seed: 3)
        let names = model.namedParameters().map(\.name)
        #expect(names.first == "wte.weight")
        #expect(names[1] == "wpe.weight")
        #expect(names.contains("h.1.attn.c_attn.weight"))
        #expect(names.contains("h.0.mlp.c_proj.bias"))
        #expect(names.last == "ln_f.bias")
        #expect(names.count == 4 + 12 * configuration.layers)
        #expect(model.parameterCount == configuration.parameterCount)
        #expect(model.tokenEmbedding.weight.name == "wte.weight")
        #expect(try GPT(configuration, seed: 3).namedParameters().map(\.name) == names)
    }

    @Test func initialisationFollowsGPT2() throws {
        let big = GPTConfiguration(vocabularySize: 256, contextLength: 64, layers: 4, heads: 4, width: 128)
        let model = try GPT(big, seed: 11)
        func std(_ t: Tensor) -> Double {
            let v = t.toArray().map(Double.init)
            let mean = v.reduce(0, +) / Double(v.count)
            return (v.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Double(v.count)).squareRoot()
        }
        #expect(abs(std(model.tokenEmbedding.weight) - 0.02) < 0.001)
        #expect(abs(std(model.blocks[0].attention.qkvProjection.weight) - 0.02) < 0.001)
        let residualStd = 0.02 / (2.0 * 4).squareRoot()
        #expect(abs(std(model.blocks[0].attention.outputProjection.weight) - residualStd) < 0.0005)
        #expect(abs(std(model.blocks[3].mlp.projection.weight) - residualStd) < 0.0005)
        #expect(model.blocks[0].attention.qkvProjection.bias!.toArray().allSatisfy { $0 == 0 })
        #expect(model.blocks[1].attentionNorm.weight.toArray().allSatisfy { $0 == 1 })
        // Same seed, same weights; another seed, other weights.
        #expect(try GPT(big, seed: 11).blocks[2].mlp.fullyConnected.weight.toArray() == model.blocks[2].mlp.fullyConnected.weight.toArray())
        #expect(try GPT(big, seed: 12).blocks[2].mlp.fullyConnected.weight.toArray() != model.blocks[2].mlp.fullyConnected.weight.toArray())
    }

    @Test func fusedForwardAndBackwardMatchPrimitiveComposition() throws {
        let model = try GPT(configuration, seed: 5)
        let batch = 3, time = 12
        let tokens = sampleTokens(count: batch * time, vocabulary: 64, seed: 1)
        let targets = sampleTokens(count: batch * time, vocabulary: 64, seed: 2)

        let fusedLogits = model.logits(tokens, batch: batch, time: time)
        let referenceLogits = PrimitiveGPT.logits(model, tokens: tokens, batch: batch, time: time)
        #expect(fusedLogits.shape == [batch, time, 64])
        #expect(maxRelativeDifference(fusedLogits.toArray(), referenceLogits.toArray()) < 1e-5)

        let fusedLoss = model.loss(tokens, targets: targets, batch: batch, time: time)
        try fusedLoss.backward()
        let fusedGradients = model.parameters.map { $0.grad!.toArray() }
        model.zeroGradients()
        let referenceLoss = PrimitiveGPT.loss(model, tokens: tokens, targets: targets, batch: batch, time: time)
        try referenceLoss.backward()
        #expect(abs(fusedLoss.scalarValue - referenceLoss.scalarValue) < 1e-5 * abs(referenceLoss.scalarValue))
        for ((name, parameter), fused) in zip(model.namedParameters(), fusedGradients) {
            let difference = maxRelativeDifference(fused, parameter.grad!.toArray())
            #expect(difference < 1e-4, "gradient of \(name) differs by \(difference)")
        }
    }

    @Test func sameSeedGivesBitIdenticalLosses() throws {
        func run() throws -> [Float] {
            let model = try GPT(configuration, seed: 9)
            let optimizer = Adam.adamW(ParameterGroup.decayingMatrices(of: model, weightDecay: 0.1), learningRate: 1e-2)
            var losses: [Float] = []
            for step in 0..<4 {
                let tokens = sampleTokens(count: 2 * 16, vocabulary: 64, seed: UInt64(100 + step))
                let loss = model.loss(tokens, targets: tokens.map { ($0 + 1) % 64 }, batch: 2, time: 16)
                try loss.backward()
                optimizer.step()
                optimizer.zeroGradients()
                losses.append(loss.scalarValue)
            }
            return losses
        }
        let first = try run(), second = try run()
        #expect(first == second)
        #expect(first.last! < first.first!)
    }

    @Test func dropoutIsActiveOnlyInTrainingAndReproducible() throws {
        var dropping = configuration
        dropping.embeddingDropout = 0.1
        dropping.attentionDropout = 0.1
        dropping.residualDropout = 0.1
        let model = try GPT(dropping, seed: 2)
        let tokens = sampleTokens(count: 2 * 8, vocabulary: 64, seed: 4)
        let evaluation = model.logits(tokens, batch: 2, time: 8).toArray()
        let context = ForwardContext(training: true, seed: 1, step: 3)
        let trainingA = model.logits(tokens, batch: 2, time: 8, context: context).toArray()
        let trainingB = model.logits(tokens, batch: 2, time: 8, context: context).toArray()
        var otherStep = context
        otherStep.step = 4
        let trainingC = model.logits(tokens, batch: 2, time: 8, context: otherStep).toArray()
        #expect(trainingA == trainingB)
        #expect(trainingA != evaluation)
        #expect(trainingA != trainingC)
        // The second sequence alone, told it is sequence 1 of the batch, gets the same masks.
        var second = context
        second.firstSequence = 1
        let alone = model.logits(Array(tokens[8...]), batch: 1, time: 8, context: second).toArray()
        #expect(maxRelativeDifference(alone, Array(trainingA[(8 * 64)...])) < 1e-6)
    }

    @Test func learnsARepeatingPatternToNearZeroLoss() throws {
        let small = GPTConfiguration(vocabularySize: 256, contextLength: 16, layers: 2, heads: 2, width: 32)
        let model = try GPT(small, seed: 21)
        let optimizer = Adam.adamW(ParameterGroup.decayingMatrices(of: model, weightDecay: 0), learningRate: 1e-2)
        let pattern = Array("convoy!".utf8).map(Int32.init)
        let batch = 8, time = 16
        var loss: Float = .infinity
        var firstLoss: Float = 0
        for step in 0..<300 {
            var inputs: [Int32] = [], targets: [Int32] = []
            for b in 0..<batch {
                let offset = (step * 3 + b * 5) % pattern.count
                for t in 0..<time {
                    inputs.append(pattern[(offset + t) % pattern.count])
                    targets.append(pattern[(offset + t + 1) % pattern.count])
                }
            }
            let value = model.loss(inputs, targets: targets, batch: batch, time: time)
            try value.backward()
            GradientClipping.clip(model.parameters, maxNorm: 1)
            optimizer.step()
            optimizer.zeroGradients()
            loss = value.scalarValue
            if step == 0 { firstLoss = loss }
        }
        #expect(firstLoss > 4)
        #expect(loss < 0.02, "loss after 300 steps: \(loss)")
    }

    @Test func invalidConfigurationsAreRefusedWithAClearMessage() throws {
        #expect(throws: ConvoyError.self) { try GPT(GPTConfiguration(heads: 5, width: 384), seed: 1) }
        do {
            _ = try GPT(GPTConfiguration(heads: 5, width: 384), seed: 1)
        } catch {
            #expect("\(error)".contains("divisible") || "\(error)".contains("multiple of heads"))
        }
        #expect(throws: ConvoyError.self) { try GPT(GPTConfiguration(layers: 0), seed: 1) }
        #expect(throws: ConvoyError.self) { try GPT(GPTConfiguration(residualDropout: 1.5), seed: 1) }
    }
}
