import ConvoyTensor
import Foundation

extension TrainerState {
    /// Reads `trainer.json` (`data`, from `path`), with an error that says in words what is wrong rather than
    /// printing a raw `DecodingError`.
    ///
    /// - Throws: ``ConvoyError/malformedFile(path:reason:)``.
    public static func decode(_ data: Data, path: String) throws -> TrainerState {
        do {
            return try JSONDecoder().decode(TrainerState.self, from: data)
        } catch let error as DecodingError {
            throw ConvoyError.malformedFile(path: path, reason: "not a trainer state written by Convoy (\(describe(error))); restore it from the run that wrote the checkpoint")
        }
    }

    static func describe(_ error: DecodingError) -> String {
        func key(_ path: [CodingKey]) -> String { path.map(\.stringValue).joined(separator: ".") }
        switch error {
        case .dataCorrupted(let context):
            return context.codingPath.isEmpty ? "it is not valid JSON" : "the value of '\(key(context.codingPath))' is invalid"
        case .keyNotFound(let missing, let context):
            return "the key '\(key(context.codingPath + [missing]))' is missing"
        case .typeMismatch(let type, let context):
            return context.codingPath.isEmpty ? "it is not a JSON object" : "'\(key(context.codingPath))' is not of type \(type)"
        case .valueNotFound(let type, let context):
            return "'\(key(context.codingPath))' is null where a \(type) is expected"
        @unknown default:
            return "it cannot be decoded"
        }
    }
}
