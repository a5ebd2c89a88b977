import ArgumentParser
import CMPI
import ConvoyComm
import ConvoyTensor
import Foundation
import Synchronization

/// The `convoy` command line.
@main
struct Convoy: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "convoy",
        abstract: "Convoy: hybrid-parallel training of GPT models.",
        version: "0.1.0",
        subcommands: [TrainCommand.self, EvalCommand.self, GenerateCommand.self, TokenizeCommand.self, BenchCommand.self, LaunchCommand.self, PlanCommand.self, CheckpointCommand.self, ReportCommand.self, InfoCommand.self],
        defaultSubcommand: nil)

    /// Errors a person can cause (bad flags, files, checkpoints) end in one clear line and exit status 1,
    /// never a stack trace. Under MPI the line names the rank, and the whole job is aborted (see ``fail(_:)``).
    static func main() {
        // A closed pipe (`convoy train | head -1`) must not kill the process silently: writes then fail with
        // EPIPE, which StandardOutput turns into an error.
        signal(SIGPIPE, SIG_IGN)
        // Memory the system refuses mid-run ends in one error line (and the whole job under MPI), not a trap.
        TensorAllocator.allocationFailureHandler.withLock { $0 = { message in fail(message) } }
        do {
            // A mistyped CONVOY_GEMM is refused before any work rather than discovered at the first GEMM.
            _ = try GEMMLibrary.fromEnvironment()
            var command = try parseAsRoot()
            try command.run()
        } catch let error as ConvoyError {
            fail("\(error)")
        } catch let error as CommunicationError {
            fail("\(error)")
        } catch let error as BackwardError {
            // A collective inside backward failed: the message names the step and the collective.
            fail("\(error)")
        } catch let error as CocoaError {
            fail(error.localizedDescription)
        } catch {
            if let runtime = MPIRuntime.shared, runtime.worldSize > 1 { fail(fullMessage(for: error)) }
            exit(withError: error)
        }
    }

    /// Prints `message` as one error line and exits with status 1. Under MPI with other ranks it aborts the
    /// job instead of exiting normally: the others are (or will be) waiting for this rank in a collective, and
    /// a normal exit would wait for them in `MPI_Finalize`.
    static func fail(_ message: String) -> Never {
        if let runtime = MPIRuntime.shared, runtime.worldSize > 1 {
            let sentence = message.hasSuffix(".") ? String(message.dropLast()) : message
            FileHandle.standardError.write(Data("error: rank \(runtime.worldRank) of \(runtime.worldSize): \(sentence); aborting the job\n".utf8))
            MPIRuntime.abortJob(exitCode: 1)
        }
        FileHandle.standardError.write(Data("error: \(message)\n".utf8))
        Foundation.exit(1)
    }
}

/// `convoy info`: what this build links against.
struct InfoCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "info", abstract: "Show the GEMM and MPI libraries this build uses.")

    func run() throws {
        let gemm = GEMMLibrary.active
        let variable = GEMMLibrary.environmentVariable
        let chosen = ProcessInfo.processInfo.environment[variable].map { "\(variable)=\($0)" }
            ?? "this CPU's default; \(variable)=\(GEMMLibrary.allCases.map(\.rawValue).joined(separator: "|")) overrides"
        print("GEMM: \(gemm.name) \(gemm.version), ISA \(gemm.isa); bf16: \(gemm.bf16Kernel) (\(chosen))")
        print("  oneDNN \(GEMMLibrary.oneDNN.version): ISA \(GEMMLibrary.oneDNN.isa), bf16: \(GEMMLibrary.oneDNN.bf16Kernel)")
        print("  \(BLAS.configuration)")
        var major: Int32 = 0, minor: Int32 = 0
        _ = convoy_mpi_version(&major, &minor)
        var buffer = [CChar](repeating: 0, count: Int(convoy_mpi_max_library_version_string()) + 1)
        var length: Int32 = 0
        _ = convoy_mpi_library_version(&buffer, &length)
        let library = String(decoding: buffer.prefix(Int(length)).map { UInt8(bitPattern: $0) }, as: UTF8.self)
        print("MPI: standard \(major).\(minor); \(library.split(separator: "\n").first.map(String.init) ?? "")")
        print("compute threads (default): \(ComputePool.defaultThreadCount)")
    }
}
