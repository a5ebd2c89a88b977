import ArgumentParser
import ConvoyParallel
import ConvoyTensor
import ConvoyTrain

/// `--grad-reduce-dtype fp32|bf16` for the benchmarks that reduce gradients (`bench ddp`, `bench zero`). The text
/// is read by the training setting of the same flag (``ConvoyTrain/TrainingSettings``), so a benchmark accepts,
/// refuses and explains exactly what `convoy train` does.
struct GradientReduceOptions: ParsableArguments {
    static let flag = "--grad-reduce-dtype"
    /// The training setting's own help line.
    static let help = TrainingSettings.all.first { $0.flag == flag }?.help ?? "Element type gradients are reduced in: fp32 or bf16."

    @Option(name: .customLong("grad-reduce-dtype"), help: ArgumentHelp(GradientReduceOptions.help)) var name: String = "fp32"

    func validate() throws {
        _ = try elementType()
    }

    /// The element type gradients are reduced in, as the training setting reads `name`.
    func elementType() throws -> DType {
        var configuration = TrainingConfiguration()
        do {
            try TrainingSettings.applyFlag(Self.flag, name, to: &configuration)
        } catch {
            throw ValidationError("\(error)")
        }
        return configuration.ddp.gradientReduceDType
    }
}
