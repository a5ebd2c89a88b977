import ConvoyTensor
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Writes a TensorBoard event file, `events.out.tfevents.<seconds>.<host>`, the file PyTorch's
/// `SummaryWriter` writes: TFRecord-framed `Event` protocol buffers, the first carrying the file version.
///
/// Each record goes to the operating system as it is written (no buffering in the process), so a run that is
/// killed keeps its curve up to its last logged step.
public final class EventFileWriter {
    public let path: String
    private let descriptor: Int32

    /// The prefix of every event file's name; TensorBoard finds event files by it.
    public static let fileNamePrefix = "events.out.tfevents."

    /// Creates a new event file in `directory` (which must exist) and writes its file-version event.
    ///
    /// - Throws: ``ConvoyError/io(_:)`` naming the file when it cannot be created or written.
    public init(directory: String, wallTime: Double = Date().timeIntervalSince1970) throws {
        var name = Self.fileNamePrefix + "\(Int(wallTime)).\(Self.hostName())"
        // Two runs of one host in one second (a quick resume) must not share a file.
        if FileManager.default.fileExists(atPath: directory + "/" + name) { name += ".\(getpid()).\(UInt32.random(in: 0...UInt32.max))" }
        path = directory + "/" + name
        descriptor = open(path, O_WRONLY | O_CREAT | O_EXCL | O_APPEND | O_CLOEXEC, 0o644)
        guard descriptor >= 0 else {
            throw ConvoyError.io("cannot create the TensorBoard event file \(path): \(String(cString: strerror(errno))); choose another --output")
        }
        try write(TensorBoardEvent(wallTime: wallTime, fileVersion: TensorBoardEvent.currentFileVersion))
    }

    deinit { close(descriptor) }

    /// Appends one event holding `scalars` at `step`.
    public func write(step: Int, scalars: [TensorBoardEvent.Scalar], wallTime: Double = Date().timeIntervalSince1970) throws {
        guard !scalars.isEmpty else { return }
        try write(TensorBoardEvent(wallTime: wallTime, step: Int64(step), scalars: scalars))
    }

    /// Appends one event.
    ///
    /// - Throws: ``ConvoyError/io(_:)`` naming the file when it cannot be written (a full disk, say).
    public func write(_ event: TensorBoardEvent) throws {
        let record = TFRecord.frame(event.encoded())
        var written = 0
        while written < record.count {
            let result = record.withUnsafeBytes { Glibc.write(descriptor, $0.baseAddress! + written, $0.count - written) }
            if result < 0 {
                if errno == EINTR { continue }
                throw ConvoyError.io("cannot write \(path): \(String(cString: strerror(errno))); free some space or choose another --output (the checkpoints written so far are intact)")
            }
            written += result
        }
    }

    private static func hostName() -> String {
        var buffer = [UInt8](repeating: 0, count: 256)
        guard buffer.withUnsafeMutableBytes({ gethostname($0.baseAddress!.assumingMemoryBound(to: CChar.self), 255) }) == 0 else { return "localhost" }
        let name = String(decoding: buffer.prefix { $0 != 0 }, as: UTF8.self)
        return name.isEmpty ? "localhost" : name
    }
}
