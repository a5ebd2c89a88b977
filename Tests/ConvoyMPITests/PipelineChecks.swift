import ConvoyComm
import ConvoyNN
import ConvoyParallel
import ConvoyTensor
import Foundation

extension MPIBackendSuite {
    /// A pipeline over MPI processes trains the same model as one process: pp = the world size (up to 3), or
    /// pp 2 × dp 2 on 4 processes (with ZeRO-1 or 2), with each schedule; the whole model is collected on rank 0 and compared with
    /// the single-process run every rank computes locally.
    func testPipelineMatchesOneProcess(_ world: MPIProcessGroup) {
        let configuration = GPTConfiguration(vocabularySize: 32, contextLength: 8, layers: 4, heads: 2, width: 16)
        let pp = world.size == 4 ? 2 : world.size, dp = world.size / pp
        let batch = 8, steps = 10, microBatches = 4
        let run = TrainingReference(configuration: configuration, batch: batch, dataSeed: 93)
        let data = run.data, optimizer = TrainingReference.optimizer
        do {
            let reference = try run.train(steps: steps, clip: 0.5)
            let mesh = try DeviceMesh(dp: dp, pp: pp, tp: 1)
            let replica = mesh.position(along: .dp, of: world.rank)
            for schedule in PipelineScheduleKind.allCases {
                var options = PipelineOptions()
                options.stages = pp
                options.schedule = schedule
                options.virtualStages = schedule == .interleaved && pp == 2 ? 2 : 1
                let model = try GPT(configuration, seed: 1 + UInt64(replica))
                // With replicas: ZeRO-1 under GPipe, ZeRO-2 under the others.
                let zeroStage = dp > 1 ? (schedule == .gpipe ? 1 : 2) : 0
                let pipeline = try PipelineParallel(model: model, world: world, options: options, microBatches: microBatches, zeroStage: zeroStage,
                                                    weightDecay: 0.1, makeOptimizer: { module, _ in optimizer(module) },
                                                    makeShardOptimizer: { SGD($0, learningRate: 0.1, momentum: 0.9) })
                let perReplica = batch / dp, perMicro = perReplica / microBatches
                for step in 0..<steps {
                    let (inputs, targets) = data(step)
                    _ = try pipeline.trainStep(maxGradientNorm: 0.5) { micro in
                        let first = (replica * perReplica + micro * perMicro) * 8
                        return PipelineExecutor.MicroBatch(tokens: Array(inputs[first..<(first + perMicro * 8)]), targets: Array(targets[first..<(first + perMicro * 8)]),
                                                           batch: perMicro, time: 8, lossScale: Float(perMicro * dp) / Float(batch),
                                                           lossWeight: Double(perMicro) / Double(batch), context: ForwardContext(training: true))
                    }
                }
                try pipeline.collectModel()
                if world.rank == 0 {
                    let worst = TrainingReference.relativeError(model, reference)
                    check(worst <= 1e-5, "pipeline pp \(pp) × dp \(dp) (\(schedule.rawValue), v \(options.virtualStages)\(zeroStage > 0 ? ", ZeRO-\(zeroStage)" : "")) matches one process after \(steps) steps", "relative error \(worst)")
                }
                pipeline.releaseCollectedModel()
                try world.barrier()
            }
        } catch {
            check(false, "pipeline over MPI", "\(error)")
        }
    }
}
