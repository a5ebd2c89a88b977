import ConvoyComm
import ConvoyNN
import ConvoyParallel
import ConvoyTensor
import Foundation

extension MPIBackendSuite {
    /// Data parallelism and ZeRO stages 1–3 over MPI train the same model as one process: every rank starts from its own seed
    /// (the broadcast must fix that), trains on its slice of each global batch, and ends within 1e-5
    /// (relative) of the single-process run, which every rank computes locally for comparison.
    func testDataParallelMatchesOneProcess(_ world: MPIProcessGroup) {
        let configuration = GPTConfiguration(vocabularySize: 32, contextLength: 8, layers: 2, heads: 2, width: 16)
        let batch = 4 * world.size, steps = 10
        let run = TrainingReference(configuration: configuration, batch: batch, dataSeed: 91)
        let data = run.data, optimizer = TrainingReference.optimizer
        do {
            let reference = try run.train(steps: steps)
            for fuse in [FusionChoice.on, .off] {
                let model = try GPT(configuration, seed: 1 + UInt64(world.rank))
                var options = DataParallelOptions()
                options.fuseAllReduce = fuse
                options.firstBucketCapMB = 0.002
                options.bucketCapMB = 0.01
                let parallel = try DataParallel(module: model, group: world, options: options)
                let localOptimizer = optimizer(model)
                let perRank = batch / world.size
                for step in 0..<steps {
                    let (inputs, targets) = data(step)
                    let slice = (world.rank * perRank * 8)..<((world.rank + 1) * perRank * 8)
                    try model.loss(Array(inputs[slice]), targets: Array(targets[slice]), batch: perRank, time: 8).backward()
                    try parallel.finishGradientSynchronization()
                    localOptimizer.step()
                    parallel.zeroGradients()
                }
                let worst = TrainingReference.relativeError(model, reference)
                check(worst <= 1e-5, "data parallel (fuse_all_reduce \(fuse.rawValue)) matches one process after \(steps) steps", "relative error \(worst)")
            }
            // (stage, micro-steps, overlap_grad_reduce, overlap_param_gather, reshard_after_forward, fused shard optimizer, buckets per group)
            for (stage, microSteps, overlapReduce, overlapGather, reshard, fused, bucketsPerGroup) in [
                (1, 1, true, false, true, false, 1), (2, 1, true, false, true, false, 1), (2, 2, true, true, true, false, 1), (2, 2, false, false, true, false, 1),
                (3, 1, true, false, true, false, 1), (3, 2, true, true, true, false, 1), (3, 2, true, false, false, false, 1), (3, 2, false, false, true, false, 1),
                (1, 2, true, false, true, true, 1), (2, 2, true, true, true, true, 1), (3, 2, true, true, true, true, 1),
                (1, 2, true, true, true, false, 3), (2, 2, true, true, true, false, 2), (3, 2, true, true, true, true, 2)] {
                let model = try GPT(configuration, seed: 1 + UInt64(world.rank))
                var options = DataParallelOptions()
                options.firstBucketCapMB = 0.002
                options.bucketCapMB = 0.01
                options.overlapGradReduce = overlapReduce
                options.bucketsPerGroup = bucketsPerGroup
                options.overlapParamGather = overlapGather
                options.reshardAfterForward = reshard
                let zero = try DistributedOptimizer(module: model, group: world, stage: stage, options: options, weightDecay: 0.1) { groups -> any Optimizer in
                    fused ? try FusedSGD(groups, learningRate: 0.1, momentum: 0.9, gradientLayout: .external, placement: .inPlace)
                        : SGD(groups, learningRate: 0.1, momentum: 0.9)
                }
                let perMicro = batch / world.size / microSteps
                for step in 0..<steps {
                    let (inputs, targets) = data(step)
                    for micro in 0..<microSteps {
                        let first = (world.rank * microSteps + micro) * perMicro * 8
                        let slice = first..<(first + perMicro * 8)
                        try (model.loss(Array(inputs[slice]), targets: Array(targets[slice]), batch: perMicro, time: 8) * (1 / Float(microSteps))).backward()
                        try zero.finishBackward()
                    }
                    try zero.finishGradientSynchronization()
                    try zero.step()
                    zero.zeroGradients()
                }
                try zero.gatherFullParameters()
                let worst = TrainingReference.relativeError(model, reference)
                check(worst <= 1e-5, "ZeRO stage \(stage) (\(microSteps) micro-steps, overlap_grad_reduce \(overlapReduce), overlap_param_gather \(overlapGather), reshard_after_forward \(reshard), \(fused ? "fused" : "per-tensor") optimizer, \(bucketsPerGroup) buckets per group) matches one process after \(steps) steps", "relative error \(worst)")
            }
        } catch {
            check(false, "data parallel over MPI", "\(error)")
        }
    }
}
