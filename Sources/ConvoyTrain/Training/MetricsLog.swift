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
    public func write(_ record: [String: Any]) {
        guard let data = try? JSONSerialization.data(withJSONObject: record, options: [.sortedKeys]) else { return }
        handle.write(data)
        handle.write(Data("\n".utf8))
    }
}

