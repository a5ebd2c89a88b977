import ConvoyNN
import ConvoyTensor

/// The single-process run an MPI equivalence check compares with: every rank trains it locally on the whole
/// global batch of each step (SGD with momentum, optionally clipped).
struct TrainingReference {
    let configuration: GPTConfiguration
    let batch: Int
    let dataSeed: UInt64

    /// Step `step`'s global batch: tokens and targets (a fixed function of the token), [batch·8] each.
    func data(_ step: Int) -> ([Int32], [Int32]) {
        let generator = PhiloxRandom(seed: dataSeed, stream: UInt64(step))
        let inputs = (0..<(batch * 8)).map { Int32(generator.block(UInt64($0)).0 % 32) }
        return (inputs, inputs.map { ($0 * 5 + 1) % 32 })
    }

    /// The optimizer both sides use.
    static func optimizer(_ module: Module) -> any Optimizer {
        SGD(ParameterGroup.decayingMatrices(of: module, weightDecay: 0.1), learningRate: 0.1, momentum: 0.9)
    }

    /// The model after `steps` steps in one process.
    func train(steps: Int, clip: Float = 0) throws -> GPT {
        let model = try GPT(configuration, seed: 1)
        let optimizer = Self.optimizer(model)
        for step in 0..<steps {
            let (inputs, targets) = data(step)
            try model.loss(inputs, targets: targets, batch: batch, time: 8).backward()
            if clip > 0 { GradientClipping.clip(model.parameters, maxNorm: clip) }
            optimizer.step()
            optimizer.zeroGradients()
        }
        return model
    }

    /// The largest relative difference of any parameter of `model` from `reference`.
    static func relativeError(_ model: GPT, _ reference: GPT) -> Float {
        var worst: Float = 0
        for (a, b) in zip(model.parameters, reference.parameters) {
            let x = a.toArray(), y = b.toArray()
            worst = max(worst, zip(x, y).map { abs($0 - $1) }.max()! / max(y.map(abs).max()!, 1e-6))
        }
        return worst
    }
}
