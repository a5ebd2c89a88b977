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
        let scratch = NSTemporaryDirectory() + "convoy-mpi-ps-\(getpid())"
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        var reference = TrainingConfiguration()
        reference.model = "ctr"
        reference.ctrVocabulary = [50]
        reference.ctrEmbeddingWidth = 4
        reference.ctrHidden = 8
        reference.ctrValidation = 32
        reference.batch = 12
        reference.steps = 4
        reference.optimizer = "sgd"
        reference.learningRate = 0.2
        reference.minLearningRate = 0
        reference.schedule = "constant"
        reference.output = scratch + "/single"
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
}
