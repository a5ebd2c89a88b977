import ConvoyComm
import ConvoyNN
import ConvoyParallel
import ConvoyTensor
import ConvoyTrain
import Foundation

extension MPIBackendSuite {
    /// Every other rank sends rank 0 a message of its own length; rank 0 probes for any source, sizes a buffer
    /// from what the probe found and receives each message from its sender.
    func testProbeFromAnySource(_ world: MPIProcessGroup) {
        let tag = 77
        do {
            if world.rank == 0 {
                var seen = Set<Int>()
                for _ in 1..<world.size {
                    let found = try world.probe(tag: tag)
                    let buffer = TestBuffer(.float32, count: found.count)
                    try world.receive(buffer.buffer, from: found.source, tag: tag)
                    check(found.count == found.source + 1 && (0..<found.count).allSatisfy { buffer[$0] == Float(found.source) },
                          "probe: message from rank \(found.source)", "count \(found.count)")
                    seen.insert(found.source)
                }
                check(seen == Set(1..<world.size), "probe: every sender found once", "\(seen.sorted())")
            } else {
                let rank = world.rank
                let message = TestBuffer(.float32, count: rank + 1) { _ in Float(rank) }
                try world.send(message.buffer, to: 0, tag: tag)
            }
            try world.barrier()
        } catch {
            check(false, "probe from any source", "threw \(error)")
        }
    }

    /// The last rank is a parameter server, the others workers (np 3: 1 server, 2 workers); BSP training of the
    /// CTR model in ps and hybrid mode ends within 1e-5 (relative) of one process, which every rank computes
    /// locally: worker 0 compares the dense MLP, the server its rows of every table.
    func testParameterServerMatchesOneProcess(_ world: MPIProcessGroup) {
        guard world.size >= 2 else { return }
        // One path on every rank: the ranks must agree on the whole configuration (RunAgreement).
        guard let scratch = agreedScratch(world, "ps") else { return }
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        // Each process trains its own one-process reference (no group: nothing to agree on).
        let reference = clickConfiguration(output: scratch + "/single-\(world.rank)", optimizer: "sgd", learningRate: 0.2)
        do {
            let one = try ClickThroughTrainer(configuration: reference)
            _ = try one.run()
            let expectedDense = one.model.parameters.map { $0.toArray() }
            let expectedTables = one.tables.map { $0.values.toArray() }
            for comm in ["ps", "hybrid"] {
                var distributed = reference
                distributed.psServers = 1
                distributed.comm = comm
                distributed.output = scratch + "/\(comm)"
                let trainer = try ClickThroughTrainer(configuration: distributed, world: world)
                _ = try trainer.run()
                var worst: Float = 0
                if trainer.isServer {
                    for (table, expected) in zip(trainer.tables, expectedTables) {
                        let scale = max(expected.map(abs).max()!, 1e-6)
                        worst = max(worst, zip(table.values.toArray(), expected).map { abs($0 - $1) }.max()! / scale)
                    }
                    check(worst <= 1e-5, "parameter server (\(comm)): table rows match one process", "relative error \(worst)")
                } else if trainer.workerIndex == 0 {
                    for (parameter, expected) in zip(trainer.model.parameters, expectedDense) {
                        worst = max(worst, zip(parameter.toArray(), expected).map { abs($0 - $1) }.max()! / max(expected.map(abs).max()!, 1e-6))
                    }
                    check(worst <= 1e-5, "parameter server (\(comm)): worker 0's dense MLP matches one process", "relative error \(worst)")
                }
                try world.barrier()
            }
            // SSP (K = 1) across processes, dense parameters on the server: every pull the server answered had
            // the puller at most one step ahead of the slowest worker.
            var bounded = reference
            bounded.psServers = 1
            bounded.comm = "ps"
            bounded.staleness = "1"
            bounded.steps = 8
            bounded.output = scratch + "/ssp"
            let trainer = try ClickThroughTrainer(configuration: bounded, world: world)
            let summary = try trainer.run()
            if let statistics = summary.server {
                let worst = statistics.servedPulls.map { $0.clock - $0.slowestClock }.max() ?? 0
                check(worst <= 1 && statistics.maxStaleness <= 1 && statistics.clocks == Array(repeating: 8, count: world.size - 1),
                      "parameter server (SSP K=1): no pull more than 1 step ahead", "worst \(worst), clocks \(statistics.clocks)")
            } else {
                check(summary.maxStalenessObserved <= 1, "parameter server (SSP K=1): worker saw staleness ≤ 1", "\(summary.maxStalenessObserved)")
            }
            try world.barrier()
        } catch {
            check(false, "parameter-server training over MPI", "threw \(error)")
        }
    }

    /// A small CTR run of 4 steps of 12 examples (50-row tables, dim 4, hidden 8), constant learning rate.
    func clickConfiguration(output: String, optimizer: String, learningRate: Double) -> TrainingConfiguration {
        var configuration = TrainingConfiguration()
        configuration.model = "ctr"
        configuration.ctrVocabulary = [50]
        configuration.ctrEmbeddingWidth = 4
        configuration.ctrHidden = 8
        configuration.ctrValidation = 32
        configuration.batch = 12
        configuration.steps = 4
        configuration.optimizer = optimizer
        configuration.learningRate = learningRate
        configuration.minLearningRate = 0
        configuration.schedule = "constant"
        configuration.output = output
        return configuration
    }

    /// A scratch path named after rank 0's process id, the same on every rank (nil after a failed check).
    func agreedScratch(_ world: MPIProcessGroup, _ label: String) -> String? {
        let pid = Tensor(shape: [1], values: [world.rank == 0 ? Float(getpid()) : 0])
        do { try world.broadcast(pid, root: 0) } catch {
            check(false, "agree on a scratch directory", "threw \(error)")
            return nil
        }
        return NSTemporaryDirectory() + "convoy-mpi-\(label)-\(Int(pid.scalarValue))"
    }

    /// Periodic CTR checkpoints across processes (BSP, hybrid, Adagrad, the last rank a server): the checkpoint
    /// of step 2 of 4 verifies, and resuming from it ends with worker 0's dense MLP and the server's rows bit
    /// for bit as the run that wrote it. Then a rank started with another learning rate is refused on every
    /// rank, the message naming the key.
    func testParameterServerCheckpointsAcrossProcesses(_ world: MPIProcessGroup) {
        guard world.size >= 2, let scratch = agreedScratch(world, "ps-checkpoint") else { return }
        defer { if world.rank == 0 { try? FileManager.default.removeItem(atPath: scratch) } }
        var configuration = clickConfiguration(output: scratch + "/straight", optimizer: "adagrad", learningRate: 0.05)
        configuration.psServers = 1
        configuration.checkpointEvery = 2
        func held(_ trainer: ClickThroughTrainer) -> [[Float]] {
            trainer.isServer ? trainer.tables.map { $0.values.toArray() } : trainer.model.parameters.map { $0.toArray() }
        }
        do {
            let straight = try ClickThroughTrainer(configuration: configuration, world: world)
            _ = try straight.run()
            let expected = held(straight)
            try world.barrier()
            let checkpoint = configuration.periodicCheckpointDirectory
            if world.rank == 0 {
                let index = try CheckpointIndex.read(from: checkpoint)
                _ = try CheckpointVerifier.verify(directory: checkpoint)
                check(index.step == 2 && index.ranks == world.size, "CTR periodic checkpoint over MPI: step 2, every rank counted", "step \(index.step), ranks \(index.ranks)")
            }
            var resumed = configuration
            resumed.output = scratch + "/resumed"
            let trainer = try ClickThroughTrainer(configuration: resumed, world: world, resume: checkpoint)
            _ = try trainer.run()
            if trainer.isServer || trainer.workerIndex == 0 {
                check(trainer.startStep == 2 && held(trainer) == expected, "CTR resume over MPI is bit-identical (\(trainer.isServer ? "server rows" : "worker 0's MLP"))")
            }
            try world.barrier()
        } catch {
            check(false, "CTR periodic checkpoints over MPI", "threw \(error)")
        }
        var mine = configuration
        mine.output = scratch + "/disagree"
        if world.rank == world.size - 1 { mine.learningRate = 0.5 }
        do {
            _ = try ClickThroughTrainer(configuration: mine, world: world)
            check(false, "CTR ranks with different flags are refused over MPI", "the trainer was built")
        } catch {
            check("\(error)".contains("training.lr") && "\(error)".contains("rank \(world.size - 1) has"), "CTR ranks with different flags are refused over MPI", "\(error)")
        }
    }
}
