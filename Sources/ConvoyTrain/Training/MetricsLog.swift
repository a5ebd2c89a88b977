import ConvoyTensor
import Foundation

/// Appends one JSON object per logged step to `metrics.jsonl` (step, loss, lr, tokens/s, grad norm,
/// elapsed seconds; evaluation results as their own lines), and the same numbers as TensorBoard scalars to an
/// event file beside it (``EventFileWriter``), with the record's step as the event step.
public final class MetricsLog {
    private let handle: FileHandle
    private let events: EventFileWriter
    public let path: String
    /// The TensorBoard event file this run writes.
    public var eventFilePath: String { events.path }

    /// The TensorBoard tag of each metrics key that becomes a scalar; other keys (elapsed seconds, flags,
    /// counts) stay in `metrics.jsonl` only.
    public static let scalarTags: [(key: String, tag: String)] = [
        ("loss", "train/loss"), ("val_loss", "validation/loss"), ("lr", "train/learning_rate"),
        ("tokens_per_s", "train/tokens_per_second"), ("samples_per_s", "train/samples_per_second"),
        ("grad_norm", "train/grad_norm"), ("loss_scale", "train/loss_scale"),
        ("val_logloss", "validation/log_loss"), ("val_auc", "validation/auc"), ("accuracy", "validation/accuracy"),
    ]

    /// Opens (appending, so a resumed run continues the same file) `directory/metrics.jsonl`, and starts a new
    /// event file (TensorBoard reads every event file of a directory, so a resumed run simply adds one).
    public init(directory: String) throws {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        path = directory + "/metrics.jsonl"
        if !FileManager.default.fileExists(atPath: path) {
            _ = FileManager.default.createFile(atPath: path, contents: nil)  // failure surfaces just below
        }
        guard let handle = FileHandle(forWritingAtPath: path) else { throw ConvoyError.io("cannot open \(path) for writing") }
        handle.seekToEndOfFile()
        self.handle = handle
        events = try EventFileWriter(directory: directory)
    }

    deinit { try? handle.close() }

    /// Writes one record, and its numbers that have a tag in ``scalarTags`` as one event at the record's step.
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
        guard let step = record["step"] as? Int else { return }
        let scalars = Self.scalarTags.compactMap { key, tag -> TensorBoardEvent.Scalar? in
            guard let value = JSONNumber.double(record[key]) else { return nil }
            return TensorBoardEvent.Scalar(tag: tag, value: Float(value))
        }
        try events.write(step: step, scalars: scalars)
    }
}
