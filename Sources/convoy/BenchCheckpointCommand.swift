import ArgumentParser
import ConvoyComm
import ConvoyNN
import ConvoyParallel
import ConvoyTensor
import ConvoyTrain
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// `convoy bench checkpoint`: sharded save and load throughput against the disk's fsynced write rate measured
/// in the same run, and the extra memory a save takes.
struct BenchCheckpointCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "checkpoint",
        abstract: "Sharded checkpoint save/load GB/s (per rank and total) vs an fsynced write of the same size; peak extra bytes during a save.")

    @Option(help: "Data-parallel ranks (Local, one thread each).") var dp: Int = 4
    @Option(name: .customLong("zero-stage"), help: "ZeRO stage: 0, 1, 2 or 3.") var zeroStage: Int = 2
    @OptionGroup var shape: ModelShapeOptions
    @Option(help: "Directory to write into (a fresh subdirectory is made and removed).") var directory: String = NSTemporaryDirectory()
    @Option(help: "Timed saves (and loads); the best is reported.") var repetitions: Int = 3
    @Flag(help: "End with one JSON line of the results.") var json = false

    func validate() throws {
        guard dp >= 1, (0...3).contains(zeroStage), repetitions >= 1 else { throw ValidationError("--dp ≥ 1, --zero-stage 0…3 and --repetitions ≥ 1") }
    }

    /// One rank's timings.
    struct RankResult: Sendable {
        var saveSeconds: Double, savedBytes: Int, wallSaveSeconds: Double
        var loadSeconds: Double, loadedBytes: Int, wallLoadSeconds: Double
        var peakExtraBytes: Int
        /// During a final save, which also writes the Hugging Face export from the pieces (rank 0 reads them back
        /// one tensor at a time).
        var peakExtraBytesWithExport: Int
    }

    func run() throws {
        let scratch = directory + "/convoy-bench-checkpoint-\(getpid())"
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        var configuration = try TrainingSettings.resolve(configFile: nil, flags: [
            ("--digits", "2"), ("--layers", String(shape.layers)), ("--d-model", String(shape.dModel)), ("--heads", String(shape.heads)),
            ("--context", String(shape.context)), ("--batch", String(dp)), ("--steps", "1"), ("--optimizer", "adamw"), ("--output", scratch + "/run"),
        ])
        configuration.dp = dp
        configuration.zeroStage = zeroStage
        let frozen = configuration, repetitions = self.repetitions
        let results = try LocalWorld.run(size: dp, threadsPerRank: 1) { group -> RankResult in
            let trainer = try Trainer(configuration: frozen, group: group)
            _ = try trainer.trainStep(0)  // the optimizer's moments exist from the first step
            var best = RankResult(saveSeconds: .infinity, savedBytes: 0, wallSaveSeconds: .infinity, loadSeconds: .infinity, loadedBytes: 0,
                                  wallLoadSeconds: .infinity, peakExtraBytes: 0, peakExtraBytesWithExport: 0)
            let target = scratch + "/checkpoint"
            for _ in 0..<repetitions {
                // Save: this rank's own write timed alone, and the whole collective save (index and rename included).
                try group.barrier()
                let allocator = TensorAllocator.shared
                if group.rank == 0 { allocator.resetPeak() }
                try group.barrier()
                let before = allocator.liveBytes
                let tag = "bench-\(group.rank)"
                let own = scratch + "/own-\(tag)"
                try FileManager.default.createDirectory(atPath: own, withIntermediateDirectories: true)
                let ownStart = Timeline.now
                let bytes = try trainer.runtime.writeCheckpointShard(into: own)
                let ownSeconds = Double(Timeline.now - ownStart) / 1e9
                try FileManager.default.removeItem(atPath: own)
                try group.barrier()
                let wallStart = Timeline.now
                try trainer.saveCheckpoint(afterStep: 1, to: target)
                let wall = Double(Timeline.now - wallStart) / 1e9
                let extra = max(allocator.peakLiveBytes - before, 0)
                // Load: this rank reads what it holds, from the pieces.
                try group.barrier()
                let loadStart = Timeline.now
                try trainer.runtime.loadCheckpoint(from: try ShardedCheckpointReader(directory: target))
                let loadSeconds = Double(Timeline.now - loadStart) / 1e9
                try group.barrier()
                let wallLoad = Double(Timeline.now - loadStart) / 1e9
                let synchronizer = trainer.runtime.synchronizer
                let states = Set(trainer.optimizer.stateViews().tensors.keys.compactMap { $0.split(separator: ".").last }).count
                let loaded = synchronizer.residentParameterSlices.reduce(0) { $0 + $1.count * 4 } + synchronizer.checkpointSlices.reduce(0) { $0 + $1.count * 4 * states }
                if wall < best.wallSaveSeconds {
                    best = RankResult(saveSeconds: ownSeconds, savedBytes: bytes, wallSaveSeconds: wall, loadSeconds: loadSeconds, loadedBytes: loaded,
                                      wallLoadSeconds: wallLoad, peakExtraBytes: extra, peakExtraBytesWithExport: 0)
                }
            }
            try group.barrier()
            if group.rank == 0 { TensorAllocator.shared.resetPeak() }
            try group.barrier()
            let before = TensorAllocator.shared.liveBytes
            try trainer.saveCheckpoint(afterStep: 1, to: scratch + "/final", exportWeights: true)
            best.peakExtraBytesWithExport = max(TensorAllocator.shared.peakLiveBytes - before, 0)
            return best
        }
        let total = results.reduce(0) { $0 + $1.savedBytes }
        let diskRate = try Self.fsyncedWriteRate(bytes: total, in: scratch)
        let wallSave = results.map(\.wallSaveSeconds).max()!, wallLoad = results.map(\.wallLoadSeconds).max()!
        let saveTotal = Double(total) / wallSave / 1e9
        let loadTotal = Double(results.reduce(0) { $0 + $1.loadedBytes }) / wallLoad / 1e9
        let perRankSave = results.map { Double($0.savedBytes) / $0.saveSeconds / 1e9 }
        let perRankLoad = results.map { Double($0.loadedBytes) / $0.loadSeconds / 1e9 }
        let peakExtra = results.map(\.peakExtraBytes).max()!, peakWithExport = results.map(\.peakExtraBytesWithExport).max()!
        print("# sharded checkpoint of \(shape.summary) (Ψ = \(shape.configuration.parameterCount)), AdamW, dp \(dp) Local ranks, ZeRO stage \(zeroStage); best of \(repetitions); \(directory)")
        print("rank  saved MiB  save GB/s  loaded MiB  load GB/s")
        for (rank, result) in results.enumerated() {
            print(String(format: "%4d  %9.1f  %9.3f  %10.1f  %9.3f", rank, Double(result.savedBytes) / 1_048_576, perRankSave[rank],
                         Double(result.loadedBytes) / 1_048_576, perRankLoad[rank]))
        }
        print(String(format: "total: save %.3f GB/s (%.1f MiB in %.3f s, index and rename included), load %.3f GB/s", saveTotal, Double(total) / 1_048_576, wallSave, loadTotal))
        print(String(format: "disk: one fsynced file of the same size %.3f GB/s; save ÷ disk = %.2f (target ≥ 0.5)", diskRate, saveTotal / diskRate))
        print(String(format: "peak extra bytes during a save (tensor memory of all ranks of this process): %.3f MiB; during a final save with the Hugging Face export: %.3f MiB (largest parameter %.3f MiB)",
                     Double(peakExtra) / 1_048_576, Double(peakWithExport) / 1_048_576, Double(max(shape.configuration.vocabularySize, shape.context, 4 * shape.dModel) * shape.dModel * 4) / 1_048_576))
        if json {
            let object: [String: Any] = ["dp": dp, "zero_stage": zeroStage, "parameters": shape.configuration.parameterCount, "saved_bytes": total,
                                         "save_gb_per_s": saveTotal, "load_gb_per_s": loadTotal, "save_gb_per_s_per_rank": perRankSave,
                                         "load_gb_per_s_per_rank": perRankLoad, "disk_write_gb_per_s": diskRate, "save_over_disk": saveTotal / diskRate,
                                         "peak_extra_bytes_during_save": peakExtra, "peak_extra_bytes_during_final_save_with_export": peakWithExport]
            print(String(decoding: try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]), as: UTF8.self))
        }
    }

    /// GB/s of writing `bytes` to one new file in `directory` in 4 MiB writes, fsync included.
    static func fsyncedWriteRate(bytes: Int, in directory: String) throws -> Double {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let path = directory + "/disk-rate.bin"
        defer { unlink(path) }
        let chunk = [UInt8](repeating: 0x5A, count: 4 << 20)
        let descriptor = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard descriptor >= 0 else { throw ConvoyError.io("cannot create \(path): \(String(cString: strerror(errno)))") }
        defer { close(descriptor) }
        let start = Timeline.now
        var left = bytes
        try chunk.withUnsafeBytes { raw in
            while left > 0 {
                let count = Glibc.write(descriptor, raw.baseAddress!, min(left, raw.count))
                guard count > 0 else { throw ConvoyError.io("writing \(path) failed: \(String(cString: strerror(errno)))") }
                left -= count
            }
        }
        guard fsync(descriptor) == 0 else { throw ConvoyError.io("fsync of \(path) failed") }
        return Double(bytes) / (Double(Timeline.now - start) / 1e9) / 1e9
    }
}
