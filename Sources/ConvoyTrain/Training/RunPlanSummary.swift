import ConvoyNN
import ConvoyTensor
import Foundation

/// The parallel layout a run trained under, written by rank 0 into the run directory as `plan.json` so that
/// `convoy report` can show it: the world size (which `config.toml` does not hold when mpirun chose it), the
/// mesh, the features in use and the layout in words.
public struct RunPlanSummary: Codable, Equatable, Sendable {
    /// One mesh axis and its size.
    public struct Axis: Codable, Equatable, Sendable {
        public var axis: String
        public var size: Int
    }

    public var worldSize: Int
    /// The mesh axes, fastest-varying first (empty for a run without a mesh, such as the CTR trainer).
    public var mesh: [Axis]
    /// The parallel features in use, for people.
    public var features: [String]
    /// The layout in words: synchronizer and step schedule (GPT), or workers and servers (CTR).
    public var layout: String
    /// The model's parameter count.
    public var parameters: Int
    /// The model's shape, for people.
    public var model: String

    /// The file name in the run directory.
    public static let fileName = "plan.json"

    public init(worldSize: Int, mesh: [Axis], features: [String], layout: String, parameters: Int, model: String) {
        self.worldSize = worldSize
        self.mesh = mesh
        self.features = features
        self.layout = layout
        self.parameters = parameters
        self.model = model
    }

    /// Writes `plan.json` into `directory` (atomically).
    public func write(into directory: String) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        encoder.keyEncodingStrategy = .convertToSnakeCase
        try AtomicFile.write(try encoder.encode(self), to: directory + "/" + Self.fileName)
    }

    /// Reads `plan.json` from `directory`; nil when the run did not write one (runs older than the file).
    ///
    /// - Throws: ``ConvoyError/malformedFile(path:reason:)`` when the file exists and does not decode.
    public static func read(from directory: String) throws -> RunPlanSummary? {
        let path = directory + "/" + fileName
        guard let data = FileManager.default.contents(atPath: path) else { return nil }
        let decoder = JSONDecoder()
        decoder.keyDecodingStrategy = .convertFromSnakeCase
        do { return try decoder.decode(RunPlanSummary.self, from: data) } catch {
            throw ConvoyError.malformedFile(path: path, reason: "not a Convoy plan summary: \(error)")
        }
    }
}
