/// Errors Convoy reports to its users. Every message says what is wrong and what to change.
public enum ConvoyError: Error, CustomStringConvertible, Equatable, Sendable {
    /// A configuration value or flag is invalid (key or flag, what is wrong, what to change).
    case invalidConfiguration(String)
    /// A file (safetensors, checkpoint, config.json, dataset) is malformed; the message names the problem.
    case malformedFile(path: String, reason: String)
    /// Two things that must agree (a checkpoint and a model, two shapes) do not.
    case incompatible(String)
    /// An I/O operation failed.
    case io(String)
    /// A tensor operation was given arguments it cannot handle.
    case invalidArgument(String)
    /// The system refused memory (how much, for what, what to change).
    case outOfMemory(String)

    public var description: String {
        switch self {
        case .invalidConfiguration(let message): return "invalid configuration: \(message)"
        case .malformedFile(let path, let reason): return "malformed file \(path): \(reason)"
        case .incompatible(let message): return "incompatible: \(message)"
        case .io(let message): return "I/O error: \(message)"
        case .invalidArgument(let message): return "invalid argument: \(message)"
        case .outOfMemory(let message): return "out of memory: \(message)"
        }
    }
}
