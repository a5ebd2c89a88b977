import ArgumentParser
import CMPI
import ConvoyComm
import ConvoyTensor
import Foundation

/// The `convoy` command line.
@main
struct Convoy: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "convoy",
        abstract: "Convoy: hybrid-parallel training of GPT models.",
        version: "0.1.0",
        subcommands: [TrainCommand.self, EvalCommand.self, GenerateCommand.self, BenchCommand.self, LaunchCommand.self, PlanCommand.self, InfoCommand.self],
        defaultSubcommand: nil)

    /// Errors a person can cause (bad flags, files, checkpoints) end in one clear line and exit status 1,
    /// never a stack trace.
    static func main() {
        do {
            // A mistyped CONVOY_GEMM is refused before any work rather than discovered at the first GEMM.
            _ = try GEMMLibrary.fromEnvironment()
            var command = try parseAsRoot()
            try command.run()
        } catch let error as ConvoyError {
            FileHandle.standardError.write(Data("error: \(error)\n".utf8))
            Foundation.exit(1)
        } catch let error as CommunicationError {
            FileHandle.standardError.write(Data("error: \(error)\n".utf8))
            Foundation.exit(1)
        } catch let error as CocoaError {
            FileHandle.standardError.write(Data("error: \(error.localizedDescription)\n".utf8))
            Foundation.exit(1)
        } catch {
            exit(withError: error)
        }
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
