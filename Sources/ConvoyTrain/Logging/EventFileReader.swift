import ConvoyTensor
import Foundation

/// Reads TensorBoard event files (Convoy's own or any `SummaryWriter`'s): every record's CRCs are checked
/// and every event decoded.
public enum EventFileReader {
    /// The events of the file at `path`, in file order.
    ///
    /// - Throws: ``ConvoyError/malformedFile(path:reason:)`` for a corrupt or truncated record or an event that
    ///   does not decode; ``ConvoyError/io(_:)`` when the file cannot be read.
    public static func events(at path: String) throws -> [TensorBoardEvent] {
        guard let data = FileManager.default.contents(atPath: path) else { throw ConvoyError.io("cannot read the event file \(path)") }
        return try TFRecord.records(in: [UInt8](data), path: path).enumerated().map { index, record in
            do { return try TensorBoardEvent(decoding: record) } catch {
                throw ConvoyError.malformedFile(path: path, reason: "record \(index) is not a TensorBoard Event: \(error)")
            }
        }
    }

    /// The event files in `directory`, oldest first (their names begin with the creation time).
    public static func eventFiles(in directory: String) -> [String] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
        return names.filter { $0.hasPrefix(EventFileWriter.fileNamePrefix) }
            .sorted { (creationTime($0), $0) < (creationTime($1), $1) }
            .map { directory + "/" + $0 }
    }

    private static func creationTime(_ name: String) -> Int {
        Int(name.dropFirst(EventFileWriter.fileNamePrefix.count).prefix { $0 != "." }) ?? 0
    }
}
