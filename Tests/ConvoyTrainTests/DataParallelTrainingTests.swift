import ConvoyComm
import ConvoyNN
import ConvoyParallel
import ConvoyTensor
import ConvoyTrain
import Foundation
import Testing

@Suite(.serialized) struct DataParallelTrainingTests {
    func configuration(output: String) throws -> TrainingConfiguration {
        var configuration = try tinyConfiguration(output: output, steps: 10)
        // SGD with momentum: Adam's normalised update magnifies last-bit differences of near-zero gradients.
        configuration.optimizer = "momentum"
        configuration.learningRate = 0.05
        configuration.dropout = 0.1
        return configuration
    }

    func relativeError(_ a: [[Float]], _ b: [[Float]]) -> Float {
        zip(a, b).map { x, y in zip(x, y).map { abs($0 - $1) }.max()! / max(x.map(abs).max()!, 1e-6) }.max()!
    }

    @Test(arguments: [(2, "on", "on", 1), (2, "off", "off", 1), (4, "auto", "auto", 2)])
    func dataParallelTrainingMatchesOneProcess(ranks: Int, fuseAllReduce: String, fuseOptimizer: String, accumulate: Int) throws {
        let single = scratchDirectory("dp-single"), parallel = scratchDirectory("dp-parallel")
        defer { for path in [single, parallel] { try? FileManager.default.removeItem(atPath: path) } }
        var reference = try configuration(output: single)
        reference.accumulateSteps = accumulate
        let one = try Trainer(configuration: reference)
        _ = try one.run()

        var distributed = reference
        distributed.output = parallel
        distributed.dp = ranks
        try TrainingSettings.applyFlag("--fuse-all-reduce", fuseAllReduce, to: &distributed)
        try TrainingSettings.applyFlag("--fuse-optimizer", fuseOptimizer, to: &distributed)
        distributed.ddp.firstBucketCapMB = 0.001
        distributed.ddp.bucketCapMB = 0.004
        let frozen = distributed
        let weights = try LocalWorld.run(size: ranks, threadsPerRank: 1) { group -> [[Float]] in
            let trainer = try Trainer(configuration: frozen, group: group)
            _ = try trainer.run()
            return trainer.model.parameters.map { $0.toArray() }
        }
        let expected = one.model.parameters.map { $0.toArray() }
        for (rank, result) in weights.enumerated() {
            let error = relativeError(result, expected)
            #expect(error <= 1e-5, "dp \(ranks) rank \(rank) fuse \(fuseAllReduce)/\(fuseOptimizer): relative error \(error)")
        }
        // Only rank 0 wrote outputs, and its checkpoint holds the trained weights.
        #expect(FileManager.default.fileExists(atPath: parallel + "/final/model.safetensors"))
        let metrics = try String(contentsOfFile: parallel + "/metrics.jsonl", encoding: .utf8)
        #expect(metrics.split(separator: "\n").filter { $0.contains("\"loss\"") }.count == 10)
    }

    /// (stage, dp, accumulation, overlap_param_gather, fuse_optimizer, buckets per group): fuse_optimizer "auto"
    /// fuses (dp > 1), "off" does not.
    @Test(arguments: [(1, 2, 1, false, "auto", 1), (2, 2, 2, false, "on", 1), (2, 4, 1, false, "auto", 1), (1, 2, 2, true, "off", 1), (2, 2, 1, true, "off", 1),
                      (3, 2, 2, false, "on", 1), (3, 4, 1, true, "auto", 1), (3, 2, 1, false, "off", 1), (1, 2, 2, true, "auto", 2), (2, 4, 2, true, "auto", 3),
                      (3, 2, 2, true, "auto", 2)])
    func zeroTrainingMatchesOneProcess(stage: Int, ranks: Int, accumulate: Int, overlapParamGather: Bool, fuseOptimizer: String, bucketsPerGroup: Int) throws {
        let single = scratchDirectory("zero-single"), parallel = scratchDirectory("zero-parallel")
        defer { for path in [single, parallel] { try? FileManager.default.removeItem(atPath: path) } }
        var reference = try configuration(output: single)
        reference.accumulateSteps = accumulate
        reference.gradClip = 0.5
        let one = try Trainer(configuration: reference)
        _ = try one.run()
        var distributed = reference
        distributed.output = parallel
        distributed.dp = ranks
        distributed.zeroStage = stage
        distributed.ddp.overlapParamGather = overlapParamGather
        try TrainingSettings.applyFlag("--fuse-optimizer", fuseOptimizer, to: &distributed)
        try TrainingSettings.applyFlag("--buckets-per-group", String(bucketsPerGroup), to: &distributed)
        distributed.ddp.firstBucketCapMB = 0.001
        distributed.ddp.bucketCapMB = 0.004
        let frozen = distributed
        let weights = try LocalWorld.run(size: ranks, threadsPerRank: 1) { group -> [[Float]] in
            let trainer = try Trainer(configuration: frozen, group: group)
            let zero = trainer.runtime.synchronizer as? DistributedOptimizer
            #expect(zero?.stage == stage)
            #expect(zero.map { $0.groupLayouts.allSatisfy { $0.buckets.count <= bucketsPerGroup } } == true)
            #expect((trainer.optimizer is FusedSGD) == (fuseOptimizer != "off"), "fuse_optimizer \(fuseOptimizer) under ZeRO")
            _ = try trainer.run()
            return trainer.model.parameters.map { $0.toArray() }
        }
        let expected = one.model.parameters.map { $0.toArray() }
        for (rank, result) in weights.enumerated() {
            let error = relativeError(result, expected)
            #expect(error <= 1e-5, "ZeRO-\(stage) dp \(ranks) fuse_optimizer \(fuseOptimizer) buckets/group \(bucketsPerGroup) rank \(rank): relative error \(error)")
        }
        // The ZeRO checkpoint (each rank wrote its shards) loads into one process as the whole model.
        var resumed = reference
        resumed.output = single + "-again"
        let loaded = try Trainer(configuration: resumed, resume: parallel + "/final")
        #expect(loaded.firstStep == 10)
        #expect(loaded.model.parameters.map { $0.toArray() } == weights[0], "ZeRO-\(stage): the whole model read back from the shards")
    }

    @Test(arguments: [1, 2, 3])
    func resumingUnderZeROIsBitIdentical(stage: Int) throws {
        let straight = scratchDirectory("zero-straight"), split = scratchDirectory("zero-split")
        defer { for path in [straight, split] { try? FileManager.default.removeItem(atPath: path) } }
        var configuration = try configuration(output: straight)
        configuration.optimizer = "adamw"
        configuration.dp = 2
        configuration.zeroStage = stage
        configuration.checkpointEvery = 5
        let frozen = configuration
        let checkpoint = straight + "/checkpoint"
        /// Trains `configuration` on 2 Local ranks (from `checkpoint` when resuming); rank-by-rank weights.
        func train(_ configuration: TrainingConfiguration, resuming: Bool, check: @escaping @Sendable (Trainer) -> Void = { _ in }) throws -> [[[Float]]] {
            try LocalWorld.run(size: 2, threadsPerRank: 1) { group -> [[Float]] in
                let trainer = try Trainer(configuration: configuration, group: group, resume: resuming ? checkpoint : nil)
                check(trainer)
                _ = try trainer.run()
                return trainer.model.parameters.map { $0.toArray() }
            }
        }
        let full = try train(frozen, resuming: false)
        #expect(FileManager.default.fileExists(atPath: checkpoint + "/" + CheckpointIndex.rankFileName(rank: 1, of: 2)))
        #expect(FileManager.default.fileExists(atPath: checkpoint + "/" + CheckpointIndex.fileName))
        var resumed = frozen
        resumed.output = split
        resumed.checkpointEvery = 0
        let continued = try train(resumed, resuming: true) { #expect($0.firstStep == 5) }
        #expect(continued == full, "ZeRO-\(stage): resuming must give bit-identical weights")

        // The shard state saved by the fused optimizer (fuse_optimizer auto, dp 2) resumes under the per-tensor
        // one: same keys, same arithmetic, so still bit-identical.
        var perTensor = resumed
        perTensor.output = split + "-per-tensor"
        perTensor.ddp.fuseOptimizer = .off
        defer { try? FileManager.default.removeItem(atPath: perTensor.output) }
        let crossed = try train(perTensor, resuming: true) { #expect(!($0.optimizer is FusedAdam)) }
        #expect(crossed == full, "ZeRO-\(stage): a fused shard state resumed per-tensor must give bit-identical weights")

        // Another data-parallel size loads it too; another global batch is refused, saying what to change.
        var otherLayout = resumed
        otherLayout.dp = 4
        let frozenOther = otherLayout
        let steps = try LocalWorld.run(size: 4, threadsPerRank: 1) { group in try Trainer(configuration: frozenOther, group: group, resume: checkpoint).firstStep }
        #expect(steps == [5, 5, 5, 5])
        var otherBatch = otherLayout
        otherBatch.batch = 16
        let frozenBatch = otherBatch
        do {
            _ = try LocalWorld.run(size: 4, threadsPerRank: 1) { group in try Trainer(configuration: frozenBatch, group: group, resume: checkpoint) }
            Issue.record("a checkpoint trained with batch 8 must not resume with batch 16")
        } catch {
            #expect("\(error)".contains("--batch 8"), "\(error)")
        }
    }

    @Test func badDataParallelConfigurationsAreRefusedBeforeCompute() throws {
        let output = scratchDirectory("dp-bad")
        defer { try? FileManager.default.removeItem(atPath: output) }
        var configuration = try tinyConfiguration(output: output)
        configuration.batch = 6
        let frozen = configuration
        do {
            _ = try LocalWorld.run(size: 4, threadsPerRank: 1) { group in try Trainer(configuration: frozen, group: group) }
            Issue.record("a batch of 6 over 4 ranks should be refused")
        } catch {
            #expect("\(error)".contains("batch 6") && "\(error)".contains("multiple of 4"))
        }
        var mismatched = try tinyConfiguration(output: output)
        mismatched.dp = 3
        let frozenMismatch = mismatched
        do {
            _ = try LocalWorld.run(size: 2, threadsPerRank: 1) { group in try Trainer(configuration: frozenMismatch, group: group) }
            Issue.record("dp 3 on a world of 2 should be refused")
        } catch {
            #expect("\(error)".contains("world size 2") && "\(error)".contains("--dp"))
        }
        var parsed = TrainingConfiguration()
        try TrainingSettings.apply(toml: "[parallel]\ndp = 2\n[parallel.ddp]\nbucketing = false\nfuse_all_reduce = \"on\"\nbucket_cap_mb = 4.0\n", source: "p.toml", to: &parsed)
        #expect(parsed.dp == 2 && !parsed.ddp.bucketing && parsed.ddp.fuseAllReduce == .on && parsed.ddp.bucketCapMB == 4)
        #expect(throws: ConvoyError.self) { try TrainingSettings.apply(toml: "[parallel.ddp]\nfuse_all_reduce = \"maybe\"\n", source: "p.toml", to: &parsed) }
        #expect(throws: ConvoyError.self) { try TrainingSettings.apply(toml: "[parallel.ddp]\nbucketting = true\n", source: "p.toml", to: &parsed) }
        let stageThree = try TrainingSettings.resolve(configFile: nil, flags: [("--dp", "2"), ("--zero-stage", "3"), ("--reshard-after-forward", "false")])
        #expect(stageThree.zeroStage == 3 && !stageThree.ddp.reshardAfterForward)
        let grouped = try TrainingSettings.resolve(configFile: nil, flags: [("--dp", "2"), ("--zero-stage", "2"), ("--buckets-per-group", "4")])
        #expect(grouped.ddp.bucketsPerGroup == 4)
        #expect(throws: ConvoyError.self) { try TrainingSettings.resolve(configFile: nil, flags: [("--buckets-per-group", "0")]) }
        #expect(throws: ConvoyError.self) { try TrainingSettings.resolve(configFile: nil, flags: [("--zero-stage", "4")]) }
        #expect(throws: ConvoyError.self) { try TrainingSettings.resolve(configFile: nil, flags: [("--dp", "1"), ("--zero-stage", "1")]) }
    }
}
