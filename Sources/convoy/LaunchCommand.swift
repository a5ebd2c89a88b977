import ArgumentParser
import ConvoyTensor
import Foundation

/// `convoy launch -n N [--hostfile F] -- convoy train …`: starts N ranks under Open MPI's `mpirun` with the
/// flags this machine needs.
struct LaunchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "launch",
        abstract: "Run a command on N ranks under mpirun (adds --allow-run-as-root as root, --oversubscribe beyond the cores).",
        discussion: "A leading `convoy` in the command is replaced by this executable's path, so every rank runs the same build.")

    @Option(name: .shortAndLong, help: "Number of ranks.") var n: Int
    @Option(help: "Open MPI hostfile for multi-host runs.") var hostfile: String?
    @Flag(help: "Print the mpirun command instead of running it.") var dryRun = false
    @Flag(help: "Restart a failed `convoy train` job from its last complete checkpoint, with the ranks that are left and a plan made anew for them.") var elastic = false
    @Option(name: .customLong("max-restarts"), help: "With --elastic: restarts allowed.") var maxRestarts: Int = 3
    @Option(name: .customLong("min-ranks"), help: "With --elastic: never restart with fewer ranks.") var minRanks: Int = 1
    @Argument(parsing: .captureForPassthrough, help: "The command each rank runs (after --).") var command: [String] = []

    func validate() throws {
        guard n > 0 else { throw ValidationError("-n must be positive") }
        guard maxRestarts >= 0, minRanks >= 1, minRanks <= n else { throw ValidationError("--max-restarts must be ≥ 0 and --min-ranks between 1 and -n") }
        guard !command.filter({ $0 != "--" }).isEmpty else { throw ValidationError("give the command to run after --, e.g. convoy launch -n 2 -- convoy train") }
    }

    /// The full mpirun argument list: `n` ranks (or `ranks`) running the command (or `words`).
    func mpirunArguments(ranks: Int? = nil, words given: [String]? = nil) -> [String] {
        let n = ranks ?? self.n
        var words = given ?? (command.first == "--" ? Array(command.dropFirst()) : command)
        if words.first == "convoy" { words[0] = CommandLine.arguments[0].hasPrefix("/") ? CommandLine.arguments[0] : FileManager.default.currentDirectoryPath + "/" + CommandLine.arguments[0] }
        var arguments = ["mpirun", "-np", String(n)]
        if getuid() == 0 { arguments.append("--allow-run-as-root") }
        if let hostfile { arguments += ["--hostfile", hostfile] } else if n > ProcessInfo.processInfo.activeProcessorCount { arguments.append("--oversubscribe") }
        // Convoy's settings (timeouts, collective debugging) must be the same on every rank, remote ones included.
        for name in ProcessInfo.processInfo.environment.keys.sorted() where name.hasPrefix("CONVOY_") { arguments += ["-x", name] }
        return arguments + words
    }

    func run() throws {
        if let hostfile, !FileManager.default.fileExists(atPath: hostfile) {
            throw ConvoyError.io("hostfile \(hostfile) does not exist")
        }
        if elastic && !dryRun {
            try ElasticLaunch(ranks: n, maximumRestarts: maxRestarts, minimumRanks: minRanks, command: command,
                              mpirun: { mpirunArguments(ranks: $0, words: $1) }).run()
            return
        }
        let arguments = mpirunArguments()
        if dryRun {
            print(arguments.joined(separator: " "))
            return
        }
        // Replace this process, so signals and the exit status pass straight through.
        let cArguments = arguments.map { strdup($0) } + [nil]
        execvp("mpirun", cArguments)
        throw ConvoyError.io("could not start mpirun (\(String(cString: strerror(errno)))); install openmpi-bin (scripts/install-dependencies)")
    }
}
