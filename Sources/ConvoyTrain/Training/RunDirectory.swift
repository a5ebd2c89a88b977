import ConvoyTensor
import Foundation

/// The rules for the paths a training run writes: Convoy never deletes or replaces what it did not write.
///
/// - `--output` may be a new or empty directory, or a Convoy run directory (one with a `.convoy.lock`, or
///   the `config.toml` and `metrics.jsonl` of an older run). Any other existing path is refused, naming it.
/// - Replacing a previous run's outputs (its metrics, periodic and final checkpoints) needs `--overwrite`;
///   a resumed run (`--resume`) continues its output directory instead and appends to its metrics.
/// - `--save` (and the checkpoints inside the output directory) may be a new path, an empty directory, or a
///   Convoy checkpoint (a directory with `trainer.json`), which again only `--overwrite` or `--resume`
///   replaces.
/// - The output directory is locked (``OutputLock``) for the whole run.
public enum RunDirectory {
    /// The files and directories a run writes into its output directory (besides checkpoints).
    static let metricsFileName = "metrics.jsonl"
    static let configurationFileName = "config.toml"

    /// Whether `path` is a directory holding a Convoy training checkpoint.
    public static func isCheckpoint(_ path: String) -> Bool {
        isDirectory(path) && FileManager.default.fileExists(atPath: path + "/" + TrainingCheckpoint.trainerFileName)
    }

    /// Whether `path` is a directory a Convoy run wrote its outputs into.
    public static func isRunDirectory(_ path: String) -> Bool {
        let manager = FileManager.default
        return isDirectory(path) && (manager.fileExists(atPath: path + "/" + OutputLock.fileName)
            || (manager.fileExists(atPath: path + "/" + configurationFileName) && manager.fileExists(atPath: path + "/" + metricsFileName)))
    }

    /// Throws unless a checkpoint may be written at `path`: nothing there, an empty directory, or a Convoy
    /// checkpoint. The last check before anything is replaced (``TrainingCheckpoint/save``).
    public static func checkReplaceable(checkpoint path: String, flag: String = "--save") throws {
        var directory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &directory) else { return }
        guard directory.boolValue else {
            throw ConvoyError.io("\(flag) \(path) exists and is not a directory; Convoy will not replace it. Choose a path that does not exist yet")
        }
        guard isCheckpoint(path) || entries(path).isEmpty else {
            throw ConvoyError.io("\(flag) \(path) exists and is not a Convoy checkpoint (it holds \(listing(entries(path)))); Convoy will not replace it. Choose a path that does not exist yet")
        }
    }

    /// Checks every path a run will write, before anything is written; then creates the output directory,
    /// locks it (and a `--save` directory outside it), removes what writers killed mid-write left there and,
    /// with `overwrite`, the previous run's metrics. Keep the returned locks for the whole run.
    ///
    /// A previous run's checkpoints are not removed by `--overwrite`: each is replaced atomically when this
    /// run saves to the same path, so a run that fails early still leaves the earlier checkpoint loadable.
    ///
    /// - Parameter resuming: the run continues from a checkpoint, so the outputs of the run it continues
    ///   are its own (metrics are appended, checkpoints replaced) without `--overwrite`.
    public static func claim(for configuration: TrainingConfiguration, resuming: Bool) throws -> [OutputLock] {
        let output = standardized(configuration.output)
        let final = standardized(configuration.finalCheckpointDirectory)
        let periodic = standardized(configuration.periodicCheckpointDirectory)
        let cwd = standardized(FileManager.default.currentDirectoryPath)
        // A checkpoint replaces its whole directory: it must not be (or contain) the run's outputs or the cwd.
        for protected in [output, cwd] where final == protected || protected.hasPrefix(final + "/") || final == "/" {
            throw ConvoyError.invalidConfiguration("--save \(configuration.finalCheckpointDirectory) would replace \(protected == cwd ? "the current directory" : "the --output directory") \(protected); give the checkpoint a directory of its own, such as \(configuration.output)/final")
        }

        var previousRun = false
        var isDirectoryFlag: ObjCBool = false
        if FileManager.default.fileExists(atPath: output, isDirectory: &isDirectoryFlag) {
            guard isDirectoryFlag.boolValue else {
                throw ConvoyError.io("--output \(configuration.output) exists and is not a directory; choose a directory path")
            }
            previousRun = isRunDirectory(output)
            let contents = entries(output)
            guard previousRun || contents.isEmpty else {
                throw ConvoyError.io("--output \(configuration.output) exists and is not a Convoy run directory (it holds \(listing(contents))); Convoy will not write into it. Choose a new or empty directory")
            }
        }
        // A --save outside the output directory is locked first, so a run refused for it creates no output.
        var locks: [OutputLock] = []
        if final != output && !final.hasPrefix(output + "/") {
            try makeDirectories(URL(fileURLWithPath: final).deletingLastPathComponent().path, flag: "--save")
            locks.append(try OutputLock(checkpoint: final))
        }
        try makeDirectories(output, flag: "--output")
        locks.append(try OutputLock(directory: output))
        CheckpointTemporary.removeStaleFiles(in: output)

        let checkpoints = [(final, configuration.save == nil ? "--output" : "--save"), (periodic, "--output")]
        for (path, flag) in checkpoints { try checkReplaceable(checkpoint: path, flag: flag) }
        let earlier = checkpoints.map(\.0).filter(isCheckpoint)
        if !resuming && !configuration.overwrite {
            if previousRun {
                throw ConvoyError.io("--output \(configuration.output) holds an earlier Convoy run; pass --overwrite to replace its metrics and checkpoints, --resume CHECKPOINT to continue it, or choose another --output")
            }
            if let existing = earlier.first {
                throw ConvoyError.io("\(existing) holds a checkpoint of an earlier run; pass --overwrite to replace it, or choose another --save")
            }
        }
        if configuration.overwrite && !resuming {
            // The metrics and TensorBoard curves would otherwise mix two runs; checkpoints are replaced by this run's saves.
            try remove(output + "/" + metricsFileName, onlyIfExists: true)
            for events in EventFileReader.eventFiles(in: output) { try remove(events) }
        }
        return locks
    }

    /// Throws unless a file can be written at `path` later (its directory exists and is writable, and `path`
    /// is not a directory), so that a bad path fails before a run instead of after it.
    public static func checkWritableFile(_ path: String, flag: String) throws {
        let parent = URL(fileURLWithPath: path).standardizedFileURL.deletingLastPathComponent().path
        guard isDirectory(parent) else { throw ConvoyError.io("\(flag) \(path): the directory \(parent) does not exist; create it or choose another path") }
        guard !isDirectory(path) else { throw ConvoyError.io("\(flag) \(path) is a directory; give a file path") }
        guard access(parent, W_OK) == 0 else { throw ConvoyError.io("\(flag) \(path): cannot write into \(parent) (\(String(cString: strerror(errno)))); choose another path") }
    }

    // MARK: Helpers

    static func standardized(_ path: String) -> String {
        let result = URL(fileURLWithPath: path).standardizedFileURL.path
        return result.count > 1 && result.hasSuffix("/") ? String(result.dropLast()) : result
    }

    /// `mkdir -p`, with the OS's reason on failure (Foundation's createDirectory words it vaguely).
    static func makeDirectories(_ path: String, flag: String) throws {
        var prefix = ""
        for component in path.split(separator: "/") {
            prefix += "/" + component
            if isDirectory(prefix) { continue }
            if mkdir(prefix, 0o755) == 0 { continue }
            let code = errno
            if code == EEXIST && isDirectory(prefix) { continue }
            throw ConvoyError.io("cannot create the \(flag) directory \(path): \(prefix): \(String(cString: strerror(code))); choose another path")
        }
    }

    private static func isDirectory(_ path: String) -> Bool {
        var flag: ObjCBool = false
        return FileManager.default.fileExists(atPath: path, isDirectory: &flag) && flag.boolValue
    }

    private static func entries(_ path: String) -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []).sorted()
    }

    private static func listing(_ names: [String]) -> String {
        names.prefix(3).joined(separator: ", ") + (names.count > 3 ? " and \(names.count - 3) more" : "")
    }

    private static func remove(_ path: String, onlyIfExists: Bool = false) throws {
        if onlyIfExists && !FileManager.default.fileExists(atPath: path) { return }
        do { try FileManager.default.removeItem(atPath: path) } catch {
            throw ConvoyError.io("cannot remove \(path) of the earlier run (--overwrite): \(reason(error))")
        }
    }

    /// The OS's reason for a Foundation error, without Foundation's wording around it.
    static func reason(_ error: Error) -> String {
        if let underlying = (error as NSError).userInfo[NSUnderlyingErrorKey] as? NSError { return underlying.localizedDescription }
        return (error as NSError).localizedDescription
    }
}
