import Foundation

/// Which engine carries a run's communication.
public enum CommunicationBackend: String, Sendable, CaseIterable {
    /// Ranks are threads of this process (the embedded default).
    case local
    /// Ranks are processes started by Open MPI's `mpirun`.
    case mpi

    /// The backend for a run: `requested` ("local" or "mpi") when given, otherwise MPI when the process was
    /// started by `mpirun` (Open MPI's environment is present) and Local when not.
    public static func resolve(_ requested: String?, environment: [String: String] = ProcessInfo.processInfo.environment) throws -> CommunicationBackend {
        if let requested {
            guard let backend = CommunicationBackend(rawValue: requested.lowercased()) else {
                throw CommunicationError.invalidArgument("--backend must be 'local' or 'mpi', got '\(requested)'")
            }
            if backend == .mpi && !isUnderMPI(environment) {
                throw CommunicationError.invalidArgument("--backend mpi needs the process to be started by mpirun; use `convoy launch -n N -- convoy …`")
            }
            return backend
        }
        return isUnderMPI(environment) ? .mpi : .local
    }

    /// Whether Open MPI started this process.
    public static func isUnderMPI(_ environment: [String: String] = ProcessInfo.processInfo.environment) -> Bool {
        environment["OMPI_COMM_WORLD_SIZE"] != nil && environment["OMPI_COMM_WORLD_RANK"] != nil
    }
}
