import ConvoyComm
import ConvoyNN
import ConvoyParallel
import ConvoyTensor
import Foundation

extension MPIBackendSuite {
    /// Tensor parallelism over MPI processes trains the same model as one process: tp 2 on 2 processes, tp 2 × dp 2
    /// on 4 (the mesh's tp-dp-pp order puts each tp pair on neighbouring ranks). The whole model is assembled on
    /// every rank and compared with the single-process run every rank computes locally.
    func testTensorParallelMatchesOneProcess(_ world: MPIProcessGroup) {
        guard world.size == 2 || world.size == 4 else { return }
        let configuration = GPTConfiguration(vocabularySize: 32, contextLength: 8, layers: 2, heads: 2, width: 16)
        let tp = 2, dp = world.size / tp
        let batch = 8, steps = 6
        let run = TrainingReference(configuration: configuration, batch: batch, dataSeed: 95)
        let data = run.data, optimizer = TrainingReference.optimizer
        do {
            let reference = try run.train(steps: steps, clip: 0.5)
            var settings = ParallelSettings()
            settings.tensorParallelSize = tp
            let plan = try ParallelPlan(settings: settings, worldSize: world.size, model: configuration.shape)
            let model = try GPT(configuration, seed: 1)
            let runtime = try plan.build(model: model, world: world, weightDecay: 0.1,
                                         makeOptimizer: { module, _ in optimizer(module) },
                                         makeShardOptimizer: { SGD($0, learningRate: 0.1, momentum: 0.9) })
            let replica = plan.mesh.position(along: .dp, of: world.rank), perReplica = batch / dp
            for step in 0..<steps {
                let (inputs, targets) = data(step)
                _ = try runtime.trainStep(maxGradientNorm: 0.5) { _ in
                    let first = replica * perReplica * 8
                    return MicroBatch(tokens: Array(inputs[first..<(first + perReplica * 8)]), targets: Array(targets[first..<(first + perReplica * 8)]),
                                      batch: perReplica, time: 8, lossScale: Float(perReplica * dp) / Float(batch),
                                      lossWeight: Double(perReplica) / Double(batch), context: ForwardContext(training: true))
                }
            }
            try runtime.gatherFullModel()
            let worst = TrainingReference.relativeError(model, reference)
            check(worst <= 1e-5, "tensor parallel tp \(tp) × dp \(dp) matches one process after \(steps) steps", "relative error \(worst)")
            runtime.releaseFullModel()
            try world.barrier()
        } catch {
            check(false, "tensor parallelism over MPI", "\(error)")
        }
    }
}
