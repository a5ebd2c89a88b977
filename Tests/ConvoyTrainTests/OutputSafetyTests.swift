import ConvoyComm
import ConvoyNN
import ConvoyTensor
import ConvoyTrain
import Foundation
import Testing

/// Convoy never deletes or replaces what it did not write, and two runs never share an output directory.
@Suite struct OutputSafetyTests {
    func expectRefusal(_ body: () throws -> Void, mentioning words: [String]) {
        do {
            try body()
            Issue.record("expected a refusal mentioning \(words)")
        } catch {
            let message = "\(error)"
            for word in words { #expect(message.contains(word), "'\(message)' should mention '\(word)'") }
        }
    }

    /// A pid that existed and is gone: a finished child's.
    func deadProcessIdentifier() throws -> Int32 {
        let child = Process()
        child.executableURL = URL(fileURLWithPath: "/bin/true")
        try child.run()
        child.waitUntilExit()
        return child.processIdentifier
    }

    func write(_ text: String, to path: String) throws {
        try FileManager.default.createDirectory(atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        try Data(text.utf8).write(to: URL(fileURLWithPath: path))
    }

    @Test func saveOntoAForeignDirectoryIsRefusedAndKeepsItsFiles() throws {
        let scratch = scratchDirectory("foreign-save")
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        try write("x", to: scratch + "/p/notes.txt")
        var configuration = try tinyConfiguration(output: scratch + "/out", steps: 1)
        configuration.save = scratch + "/p"
        expectRefusal({ _ = try Trainer(configuration: configuration).run() }, mentioning: [scratch + "/p", "not a Convoy checkpoint"])
        #expect(FileManager.default.fileExists(atPath: scratch + "/p/notes.txt"))
        // The last line of defence, for any caller: the checkpoint writer itself refuses too.
        let model = try GPT(configuration.modelConfiguration, seed: 1)
        expectRefusal({
            try TrainingCheckpoint.save(model: model, optimizer: nil, state: TrainerState(step: 0, seed: 1, dataPosition: 0, configuration: "", optimizer: "adamw"),
                                        to: scratch + "/p")
        }, mentioning: [scratch + "/p"])
        #expect(FileManager.default.fileExists(atPath: scratch + "/p/notes.txt"))
    }

    @Test func saveOntoTheCurrentOrOutputDirectoryIsRefused() throws {
        let scratch = scratchDirectory("save-cwd")
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        var configuration = try tinyConfiguration(output: scratch, steps: 1)
        configuration.save = "."
        expectRefusal({ _ = try RunDirectory.claim(for: configuration, resuming: false) }, mentioning: ["--save .", "current directory"])
        configuration.save = scratch
        expectRefusal({ _ = try RunDirectory.claim(for: configuration, resuming: false) }, mentioning: ["--output directory"])
    }

    @Test func outputThatIsNotARunDirectoryIsRefused() throws {
        let scratch = scratchDirectory("foreign-output")
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        try write("mine", to: scratch + "/notes.txt")
        let configuration = try tinyConfiguration(output: scratch, steps: 1)
        expectRefusal({ _ = try Trainer(configuration: configuration).run() }, mentioning: [scratch, "notes.txt", "not a Convoy run directory"])
        #expect(try FileManager.default.contentsOfDirectory(atPath: scratch) == ["notes.txt"])
        var file = configuration
        file.output = scratch + "/notes.txt"
        expectRefusal({ _ = try RunDirectory.claim(for: file, resuming: false) }, mentioning: [scratch + "/notes.txt", "not a directory"])
    }

    @Test func anEarlierRunIsReplacedOnlyWithOverwrite() throws {
        let output = scratchDirectory("overwrite")
        defer { try? FileManager.default.removeItem(atPath: output) }
        var configuration = try tinyConfiguration(output: output, steps: 2)
        _ = try Trainer(configuration: configuration).run()
        try write("mine", to: output + "/notes.txt")
        expectRefusal({ _ = try Trainer(configuration: configuration).run() }, mentioning: [output, "--overwrite"])
        configuration.overwrite = true
        configuration.steps = 3
        _ = try Trainer(configuration: configuration).run()
        let metrics = try String(contentsOfFile: output + "/metrics.jsonl", encoding: .utf8)
        // Only the new run's three steps: the old metrics were replaced, not appended to.
        #expect(metrics.split(separator: "\n").filter { $0.contains("\"loss\"") }.count == 3)
        #expect(FileManager.default.fileExists(atPath: output + "/notes.txt"))
        let state = try JSONDecoder().decode(TrainerState.self, from: Data(contentsOf: URL(fileURLWithPath: output + "/final/trainer.json")))
        #expect(state.step == 3)
    }

    @Test func aLockedOutputDirectoryIsRefusedNamingTheHolder() throws {
        let output = scratchDirectory("locked")
        defer { try? FileManager.default.removeItem(atPath: output) }
        try FileManager.default.createDirectory(atPath: output, withIntermediateDirectories: true)
        let holder = try OutputLock(directory: output)
        let configuration = try tinyConfiguration(output: output, steps: 1)
        expectRefusal({ _ = try Trainer(configuration: configuration).run() }, mentioning: [output, "in use", "pid \(getpid())"])
        withExtendedLifetime(holder) {}
    }

    @Test func staleTemporariesOfDeadProcessesAreRemovedWhenASaveStarts() throws {
        let scratch = scratchDirectory("stale")
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let dead = try deadProcessIdentifier()
        let deadTemporary = TrainingCheckpoint.temporaryDirectoryPath(for: scratch + "/ck", tag: CheckpointTemporary.tag(pid: dead, unique: "7"))
        let liveTemporary = TrainingCheckpoint.temporaryDirectoryPath(for: scratch + "/ck", tag: CheckpointTemporary.tag(pid: 1, unique: "7"))
        let foreign = scratch + "/.ck.tmp-keep"
        for path in [deadTemporary, liveTemporary, foreign] { try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true) }
        let model = try GPT(GPTConfiguration(vocabularySize: 256, contextLength: 8, layers: 1, heads: 2, width: 8), seed: 1)
        try TrainingCheckpoint.save(model: model, optimizer: nil, state: TrainerState(step: 0, seed: 1, dataPosition: 0, configuration: "", optimizer: "adamw"),
                                    to: scratch + "/ck")
        #expect(!FileManager.default.fileExists(atPath: deadTemporary))
        #expect(FileManager.default.fileExists(atPath: liveTemporary))
        #expect(FileManager.default.fileExists(atPath: foreign))
        #expect(RunDirectory.isCheckpoint(scratch + "/ck"))
    }

    @Test func overwriteKeepsTheEarlierCheckpointUntilThisRunReplacesIt() throws {
        let output = scratchDirectory("overwrite-keeps")
        defer { try? FileManager.default.removeItem(atPath: output) }
        var configuration = try tinyConfiguration(output: output, steps: 2)
        _ = try Trainer(configuration: configuration).run()
        configuration.overwrite = true
        // A run that claims the directory and then fails before its first save leaves the old checkpoint loadable.
        let locks = try RunDirectory.claim(for: configuration, resuming: false)
        #expect(RunDirectory.isCheckpoint(output + "/final"))
        #expect(!FileManager.default.fileExists(atPath: output + "/metrics.jsonl"))
        withExtendedLifetime(locks) {}
    }

    @Test func aSaveDirectoryOutsideTheOutputIsLockedToo() throws {
        let scratch = scratchDirectory("save-lock")
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        var first = try tinyConfiguration(output: scratch + "/run-a", steps: 1)
        first.save = scratch + "/shared-checkpoint"
        var second = first
        second.output = scratch + "/run-b"
        // The first run's locks live to the end of this block (a debug build keeps a local to its scope's end,
        // so the scope, not the last use, must say when the first run lets go).
        do {
            let held = try RunDirectory.claim(for: first, resuming: false)
            expectRefusal({ _ = try RunDirectory.claim(for: second, resuming: false) }, mentioning: ["--save", scratch + "/shared-checkpoint", "in use", "pid \(getpid())"])
            #expect(!FileManager.default.fileExists(atPath: second.output), "a refused run creates no output directory")
            withExtendedLifetime(held) {}
        }
        // Released with the first run: the second may go now.
        _ = try RunDirectory.claim(for: second, resuming: false)
    }

    @Test func temporaryFilesOfDeadWritersAreRemovedWhenARunStarts() throws {
        let output = scratchDirectory("stale-files")
        defer { try? FileManager.default.removeItem(atPath: output) }
        let dead = output + "/.config.toml.tmp-" + TemporaryOwner.tag(pid: try deadProcessIdentifier(), unique: "9")
        let live = output + "/.config.toml.tmp-" + TemporaryOwner.tag(pid: 1, unique: "9")
        let foreign = output + "/.notes.tmp-keep"
        for path in [dead, live, foreign] { try write("partial", to: path) }
        try write("", to: output + "/" + OutputLock.fileName)  // an earlier run's directory
        var configuration = try tinyConfiguration(output: output, steps: 1)
        configuration.overwrite = true
        let locks = try RunDirectory.claim(for: configuration, resuming: false)
        #expect(!FileManager.default.fileExists(atPath: dead))
        #expect(FileManager.default.fileExists(atPath: live))
        #expect(FileManager.default.fileExists(atPath: foreign))
        withExtendedLifetime(locks) {}
    }

    @Test func ranksWithDifferentFlagsRefuseToTrainNamingTheKey() throws {
        let output = scratchDirectory("agree")
        defer { try? FileManager.default.removeItem(atPath: output) }
        let base = try tinyConfiguration(output: output, steps: 1)
        let errors = try LocalWorld.run(size: 3, threadsPerRank: 1) { group -> String in
            var mine = base
            mine.dp = 3
            if group.rank == 2 { mine.learningRate = 0.02 }
            do {
                _ = try RunAgreement.establish(mine, group: group)
                return ""
            } catch { return "\(error)" }
        }
        for error in errors {
            #expect(error.contains("training.lr"), "\(error)")
            #expect(error.contains("ranks 0,1 have training.lr = 0.01") && error.contains("rank 2 has training.lr = 0.02"), "\(error)")
        }
        let agreed = try LocalWorld.run(size: 2, threadsPerRank: 1) { group in try RunAgreement.establish(base, group: group).nonce }
        #expect(agreed[0] == agreed[1])
    }
}
