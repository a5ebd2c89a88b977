import ConvoyComm
import ConvoyNN
import ConvoyTensor
import Foundation

/// What a checkpoint records of the layout it was saved under (`placement.json`): the mesh, and every
/// parameter's placement per mesh axis and whether it is shared — for people and tools (`convoy checkpoint
/// info`). Loading does not need it: the index's pieces are boxes of the global tensors, which any placement
/// can intersect with what it holds.
public struct PlacementManifest: Codable, Equatable, Sendable {
    /// One parameter's placement: axis name → `Replicate`, `Shard(d)` or `Partial` (axes not listed replicate).
    public struct Entry: Codable, Equatable, Sendable {
        public var axes: [String: String]
        public var sharedAs: String?
    }

    /// The mesh order, fastest-varying first (`tp-dp-pp`).
    public var order: String
    /// The size of each mesh axis.
    public var sizes: [String: Int]
    /// Every parameter of the model by name.
    public var parameters: [String: Entry]

    /// The file name inside a checkpoint directory.
    public static let fileName = "placement.json"

    /// The manifest of `model`'s parameters on `mesh`.
    public init(model: Module, mesh: DeviceMesh) {
        order = mesh.orderDescription
        sizes = Dictionary(uniqueKeysWithValues: zip(mesh.axes.map(\.rawValue), mesh.sizes))
        parameters = Dictionary(uniqueKeysWithValues: model.namedParameters().map { name, parameter in
            (name, Entry(axes: parameter.placement.axes.filter { $0.value != .replicate }.mapValues(\.description), sharedAs: parameter.placement.sharedAs))
        })
    }

    /// The manifest as JSON (sorted keys, so equal manifests give equal bytes).
    public func encoded() throws -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        return try encoder.encode(self)
    }

    /// Reads `directory`'s manifest, or nil when the checkpoint has none (written before manifests existed).
    public static func read(from directory: String) throws -> PlacementManifest? {
        let path = directory + "/" + fileName
        guard let data = FileManager.default.contents(atPath: path) else { return nil }
        do { return try JSONDecoder().decode(PlacementManifest.self, from: data) } catch {
            throw ConvoyError.malformedFile(path: path, reason: "not a placement manifest (\(error))")
        }
    }
}
