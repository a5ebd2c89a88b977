import ConvoyTensor
import Foundation

/// Appends one JSON object per logged step to `metrics.jsonl` (step, loss, lr, tokens/s, grad norm,
/// elapsed seconds; evaluation results as their own lines).
public final class MetricsLog {
    private let handle: FileHandle
    public let path: String

    /// Opens (appending, so a resumed run continues the same file) `directory/metrics.jsonl`.
    public init(directory: String) throws {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        path = directory + "/metrics.jsonl"
        if !FileManager.default.fileExists(atPath: path) {
            _ = FileManager.default.createFile(atPath: path, contents: nil)  // failure surfaces just below
        }
        guard let handle = FileHandle(forWritingAtPath: path) else { throw ConvoyError.io("cannot open \(path) for writing") }
        handle.seekToEndOfFile()
        self.handle = handle
    }

    deinit { try? handle.close() }

    /// Writes one record.
    ///
    /// - Throws: ``ConvoyError/io(_:)`` naming the file when it cannot be written (a full disk, say): an
    ///   error for the run to stop on, rather than the trap `FileHandle.write(_:)` raises.
    public func write(_ record: [String: Any]) throws {
        guard let data = try? JSONSerialization.data(withJSONObject: record, options: [.sortedKeys]) else { return }
        do {
            try handle.write(contentsOf: data + Data("\n".utf8))
        } catch {
            throw ConvoyError.io("cannot write \(path): \(RunDirectory.reason(error)); free some space or choose another --output (the checkpoints written so far are intact)")
        }
    }
}

