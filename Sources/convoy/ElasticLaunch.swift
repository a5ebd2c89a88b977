import ConvoyParallel
import ConvoyTensor
import ConvoyTrain
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// `convoy launch --elastic`: runs a `convoy train` job under mpirun and, when it fails (a rank died), starts it
/// again from its last complete checkpoint with the ranks that are left — one fewer per failure, never fewer
/// than `minimumRanks` — and a plan made anew for that world: the checkpoint loads into any layout, the global
/// batch stays and the accumulation steps adjust, so the job ends with the same number of samples trained as an
/// uninterrupted run. Prints, per restart, the training time lost (since the checkpoint it resumes from).
struct ElasticLaunch {
    var ranks: Int
    var maximumRestarts: Int
    var minimumRanks: Int
    /// The command after `--` (`convoy train …`).
    var command: [String]
    /// mpirun's arguments for `ranks` ranks running `words`.
    var mpirun: (_ ranks: Int, _ words: [String]) -> [String]

    /// The train command's settings (its `--config` and flags), and the words other than `--resume`.
    func trainSettings() throws -> (configuration: TrainingConfiguration, words: [String]) {
        var words = command.first == "--" ? Array(command.dropFirst()) : command
        guard words.count >= 2, words[0].hasSuffix("convoy"), words[1] == "train" else {
            throw ConvoyError.invalidArgument("--elastic runs `convoy train …` jobs (it restarts them from their checkpoints); got: \(words.joined(separator: " "))")
        }
        var configFile: String?, rest: [String] = []
        var index = 2
        while index < words.count {
            let word = words[index]
            if word == "--config" || word == "--resume", index + 1 < words.count {
                if word == "--config" { configFile = words[index + 1] }
                index += 2
                continue
            }
            if word.hasPrefix("--config=") { configFile = String(word.dropFirst("--config=".count)) }
            if !word.hasPrefix("--resume=") && !word.hasPrefix("--config=") { rest.append(word) }
            index += 1
        }
        let configuration = try TrainingSettings.resolve(configFile: configFile, flags: try TrainingSettings.parseFlags(rest))
        guard configuration.checkpointEvery > 0 else {
            throw ConvoyError.invalidConfiguration("--elastic restarts from the last checkpoint: give the job --checkpoint-every N")
        }
        words.removeAll()
        words = Array((command.first == "--" ? Array(command.dropFirst()) : command).prefix(2)) + (configFile.map { ["--config", $0] } ?? []) + rest
        return (configuration, words)
    }

    /// The largest world ≤ `available` (and ≥ the minimum) that the job's layout and global batch fit.
    func fittingWorld(_ configuration: TrainingConfiguration, available: Int) -> Int? {
        for world in stride(from: available, through: minimumRanks, by: -1) {
            var resized = configuration
            if resized.dp != nil { resized.dp = world / max(resized.pipeline.stages * resized.tp, 1) }
            guard let settings = try? resized.parallelSettings(),
                  let plan = try? ParallelPlan(settings: settings, worldSize: world, model: resized.modelConfiguration.shape),
                  (try? Trainer.fittingAccumulation(resized, worldSize: world)) != nil, plan.mesh.size == world else { continue }
            return world
        }
        return nil
    }

    func run() throws {
        let (configuration, baseWords) = try trainSettings()
        let checkpoint = configuration.periodicCheckpointDirectory
        var world = ranks, restarts = 0
        let start = Date()
        while true {
            var words = baseWords
            if configuration.dp != nil {
                // An explicit --dp follows the world.
                words = Self.replacing("--dp", with: String(world / max(configuration.pipeline.stages * configuration.tp, 1)), in: words)
            }
            let hasCheckpoint = (try? TrainingCheckpoint.resolvedDirectory(checkpoint)).map { (try? CheckpointIndex.read(from: $0)) != nil } ?? false
            if hasCheckpoint { words += ["--resume", checkpoint] } else if restarts > 0 { words += ["--overwrite"] }
            let attemptStart = Date()
            let status = try Self.runChild(mpirun(world, words))
            if status == 0 {
                print("elastic: the job finished after \(restarts) restart\(restarts == 1 ? "" : "s") with \(world) ranks; \(String(format: "%.1f", Date().timeIntervalSince(start))) s in all")
                return
            }
            let failedAt = Date()
            guard restarts < maximumRestarts else {
                throw ConvoyError.io("the job failed (exit status \(status)) and --max-restarts \(maximumRestarts) restarts are used up")
            }
            guard let next = fittingWorld(configuration, available: world - 1) else {
                throw ConvoyError.invalidConfiguration("the job failed with \(world) ranks and no world of \(minimumRanks)…\(world - 1) ranks fits its layout and global batch \(configuration.batch); lower --min-ranks or change --batch")
            }
            restarts += 1
            var from = "the start (no complete checkpoint yet)", lost = failedAt.timeIntervalSince(attemptStart)
            if let directory = try? TrainingCheckpoint.resolvedDirectory(checkpoint), let index = try? CheckpointIndex.read(from: directory),
               let saved = (try? FileManager.default.attributesOfItem(atPath: directory + "/" + CheckpointIndex.fileName))?[.modificationDate] as? Date {
                from = "step \(index.step) (\(index.samples) samples)"
                lost = failedAt.timeIntervalSince(max(saved, attemptStart))
            }
            print(String(format: "elastic: restart %d of %d: the job failed with exit status %d after %.1f s on %d ranks; restarting on %d ranks from %@; training time lost: %.1f s",
                         restarts, maximumRestarts, status, failedAt.timeIntervalSince(attemptStart), world, next, from, lost))
            fflush(nil)
            world = next
        }
    }

    static func replacing(_ flag: String, with value: String, in words: [String]) -> [String] {
        var result: [String] = []
        var index = 0
        while index < words.count {
            if words[index] == flag, index + 1 < words.count { result += [flag, value]; index += 2; continue }
            if words[index].hasPrefix(flag + "=") { result.append(flag + "=" + value); index += 1; continue }
            result.append(words[index])
            index += 1
        }
        return result
    }

    /// Runs `arguments` (a path-searched program and its arguments) and returns its exit status (128 + signal
    /// when killed).
    static func runChild(_ arguments: [String]) throws -> Int32 {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = arguments
        do { try process.run() } catch {
            throw ConvoyError.io("could not start \(arguments.first ?? "?") (\(error.localizedDescription)); install openmpi-bin (scripts/install-dependencies)")
        }
        process.waitUntilExit()
        return process.terminationReason == .uncaughtSignal ? 128 + process.terminationStatus : process.terminationStatus
    }
}
