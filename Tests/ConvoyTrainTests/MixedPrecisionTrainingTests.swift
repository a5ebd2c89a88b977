import ConvoyComm
import ConvoyNN
import ConvoyParallel
import ConvoyTensor
import ConvoyTrain
import Foundation
import Testing

/// bf16 training (`--precision bf16`), loss scaling and activation recompute through the trainer and every
/// strategy.
@Suite(.serialized) struct MixedPrecisionTrainingTests {
    /// Two layers (so pp 2 has a layer per stage), dropout on, SGD with momentum (see DataParallelTrainingTests).
    func configuration(output: String, steps: Int = 10) throws -> TrainingConfiguration {
        var configuration = try tinyConfiguration(output: output, steps: steps)
        configuration.layers = 2
        configuration.optimizer = "momentum"
        configuration.learningRate = 0.05
        configuration.dropout = 0.1
        configuration.precision = "bf16"
        return configuration
    }

    func relativeError(_ a: [[Float]], _ b: [[Float]]) -> Float {
        zip(a, b).map { x, y in zip(x, y).map { abs($0 - $1) }.max()! / max(x.map(abs).max()!, 1e-6) }.max()!
    }

    /// Trains `configuration` on `ranks` Local ranks; rank 0's whole model afterwards, and each rank's trainer
    /// handed to `check` after the run.
    func trainDistributed(_ configuration: TrainingConfiguration, ranks: Int, resume: String? = nil,
                          prepare: @escaping @Sendable (Trainer, Int) -> Void = { _, _ in },
                          check: @escaping @Sendable (Trainer) -> Void = { _ in }) throws -> [[Float]] {
        let results = try LocalWorld.run(size: ranks, threadsPerRank: 1) { group -> [[Float]] in
            let trainer = try Trainer(configuration: configuration, group: group, resume: resume)
            prepare(trainer, group.rank)
            _ = try trainer.run()
            check(trainer)
            return group.rank == 0 ? trainer.model.parameters.map { $0.toArray() } : []
        }
        return results[0]
    }

    /// The bf16 loss curve follows fp32's: over 200 steps the mean of every 50 steps' logged losses is within
    /// 0.05 + 5 % of fp32's, and every single logged loss within 0.05 + 15 % (bf16 keeps 8 significant bits in
    /// the GEMM operands and in every parameter's compute copy; the master weights, the optimizer and the loss
    /// are fp32, so the trajectories differ by rounding noise, not by drift — a logged loss is one batch's, and
    /// that noise moves single points by up to ~12 % while the windows and the end agree), and both fall.
    @Test func bf16LossCurveFollowsFP32() throws {
        let fp32Output = scratchDirectory("curve-fp32"), bf16Output = scratchDirectory("curve-bf16")
        defer { for path in [fp32Output, bf16Output] { try? FileManager.default.removeItem(atPath: path) } }
        func curve(_ output: String, precision: String) throws -> [Double] {
            var configuration = try tinyConfiguration(output: output, steps: 200)
            configuration.precision = precision
            configuration.logEvery = 10
            let trainer = try Trainer(configuration: configuration)
            _ = try trainer.run()
            let lines = try String(contentsOfFile: output + "/metrics.jsonl", encoding: .utf8).split(separator: "\n")
            return lines.compactMap { line in
                (try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])?["loss"] as? Double
            }
        }
        let fp32 = try curve(fp32Output, precision: "fp32"), bf16 = try curve(bf16Output, precision: "bf16")
        #expect(fp32.count == 20 && bf16.count == 20)
        for (step, (a, b)) in zip(fp32, bf16).enumerated() {
            #expect(abs(a - b) <= 0.05 + 0.15 * a, "step \((step + 1) * 10): fp32 loss \(a), bf16 \(b)")
        }
        for window in stride(from: 0, to: 20, by: 5) {
            let a = fp32[window..<(window + 5)].reduce(0, +) / 5, b = bf16[window..<(window + 5)].reduce(0, +) / 5
            #expect(abs(a - b) <= 0.05 + 0.05 * a, "steps \(window * 10 + 10)–\(window * 10 + 50): mean fp32 loss \(a), bf16 \(b)")
        }
        #expect(bf16.last! < bf16.first! * 0.7 && fp32.last! < fp32.first! * 0.7)
        #expect(fp32 != bf16, "bf16 must actually change the arithmetic")
    }

    /// DDP, ZeRO 1–3 and a 2-stage pipeline in bf16 train what one bf16 process trains. Every layout computes
    /// with the same compute copies (each parameter's fp32 master rounded to bf16: ZeRO gathers them in bf16,
    /// the others round their masters for each step). Tolerance 1e-4 (relative, normwise per parameter; measured
    /// 2.5e-5 on every layout) rather than fp32's 1e-5: the fp32 sums under the bf16 operands are ordered
    /// differently (an all-reduce, split GEMM rows), and a last-bit difference in a master or activation that
    /// sits near a bf16 rounding boundary rounds the other way — a 2^-9 relative change in that element, which
    /// later steps carry.
    @Test(arguments: [("dp", 2, 0), ("zero", 2, 1), ("zero", 2, 2), ("zero", 2, 3), ("pp", 2, 0)])
    func bf16StrategiesMatchOneBF16Process(kind: String, ranks: Int, stage: Int) throws {
        let single = scratchDirectory("bf16-single"), parallel = scratchDirectory("bf16-parallel")
        defer { for path in [single, parallel] { try? FileManager.default.removeItem(atPath: path) } }
        var reference = try configuration(output: single)
        reference.accumulateSteps = 2
        let one = try Trainer(configuration: reference)
        _ = try one.run()
        var distributed = reference
        distributed.output = parallel
        if kind == "pp" {
            try TrainingSettings.applyFlag("--pp", String(ranks), to: &distributed)
        } else {
            distributed.dp = ranks
            distributed.zeroStage = stage
        }
        let result = try trainDistributed(distributed, ranks: ranks)
        let error = relativeError(result, one.model.parameters.map { $0.toArray() })
        #expect(error <= 1e-4, "\(kind) \(ranks) stage \(stage) in bf16: relative error \(error)")
    }

    /// A non-finite gradient on one rank skips that step on every rank and halves the dynamic loss scale; the
    /// run goes on, and the ranks stay identical.
    @Test func anInjectedInfGradientSkipsOneStepEverywhereAndHalvesTheScale() throws {
        let output = scratchDirectory("loss-scale")
        defer { try? FileManager.default.removeItem(atPath: output) }
        var configuration = try configuration(output: output, steps: 6)
        configuration.lossScale = "dynamic"
        configuration.dp = 2
        let frozen = configuration
        let results = try LocalWorld.run(size: 2, threadsPerRank: 1) { group -> (skipped: Int, scale: Float, weights: [[Float]]) in
            let trainer = try Trainer(configuration: frozen, group: group)
            if group.rank == 1 { Self.injectInfGradient(into: trainer.model, atForward: 2) }
            _ = try trainer.run()
            return (trainer.lossScaler.skippedSteps, trainer.lossScaler.scale, trainer.model.parameters.map { $0.toArray() })
        }
        for (rank, result) in results.enumerated() {
            #expect(result.skipped == 1, "rank \(rank) skipped \(result.skipped) steps")
            #expect(result.scale == 32768, "rank \(rank) scale \(result.scale)")
            #expect(result.weights.allSatisfy { $0.allSatisfy(\.isFinite) })
        }
        #expect(results[0].weights == results[1].weights)
        let metrics = try String(contentsOfFile: output + "/metrics.jsonl", encoding: .utf8)
        #expect(metrics.split(separator: "\n").filter { $0.contains("\"skipped\"") }.count == 1)
        #expect(metrics.split(separator: "\n").filter { $0.contains("\"loss\"") }.count == 5)
    }

    /// Loss scaling by a power of two changes nothing else: with no overflow, dynamic scaling trains the same
    /// weights bit for bit as no scaling (scaling and unscaling by 2^16 are exact).
    @Test func dynamicLossScalingWithoutOverflowIsBitIdentical() throws {
        let plain = scratchDirectory("scale-none"), scaled = scratchDirectory("scale-dynamic")
        defer { for path in [plain, scaled] { try? FileManager.default.removeItem(atPath: path) } }
        let none = try Trainer(configuration: try configuration(output: plain))
        _ = try none.run()
        var configuration = try configuration(output: scaled)
        configuration.lossScale = "dynamic"
        let dynamic = try Trainer(configuration: configuration)
        _ = try dynamic.run()
        #expect(dynamic.lossScaler.skippedSteps == 0 && dynamic.lossScaler.goodSteps == 10)
        #expect(weights(dynamic.model) == weights(none.model))
    }

    /// The scaler's state is saved with the checkpoint and restored on resume.
    @Test func resumingRestoresTheLossScale() throws {
        let output = scratchDirectory("scale-resume"), resumedOutput = scratchDirectory("scale-resumed")
        defer { for path in [output, resumedOutput] { try? FileManager.default.removeItem(atPath: path) } }
        var configuration = try configuration(output: output, steps: 4)
        configuration.lossScale = "dynamic"
        configuration.checkpointEvery = 3
        let trainer = try Trainer(configuration: configuration)
        Self.injectInfGradient(into: trainer.model, atForward: 1)
        _ = try trainer.run()
        #expect(trainer.lossScaler.scale == 32768 && trainer.lossScaler.goodSteps == 2)
        var resumed = configuration
        resumed.output = resumedOutput
        resumed.checkpointEvery = 0
        let again = try Trainer(configuration: resumed, resume: output + "/checkpoint")
        #expect(again.firstStep == 3)
        #expect(again.lossScaler.scale == 32768 && again.lossScaler.goodSteps == 1)
        // A run without loss scaling records no scale.
        var unscaled = try self.configuration(output: output + "-none", steps: 2)
        defer { try? FileManager.default.removeItem(atPath: unscaled.output) }
        unscaled.checkpointEvery = 1
        _ = try Trainer(configuration: unscaled).run()
        let state = try TrainerState.decode(try Data(contentsOf: URL(fileURLWithPath: unscaled.output + "/checkpoint/trainer.json")), path: "trainer.json")
        #expect(state.lossScale == nil)
    }

    /// Full and selective recompute leave the trained weights bit-identical under a 2-stage pipeline, under
    /// ZeRO-3 and under tensor parallelism (whose attention is the engine's, by head), dropout on.
    @Test(arguments: [("pp", "full"), ("pp", "selective"), ("zero3", "full"), ("zero3", "selective"), ("tp", "full"), ("tp", "selective")])
    func recomputeIsBitIdenticalUnderPipelinesAndZeRO3(layout: String, granularity: String) throws {
        let plain = scratchDirectory("recompute-none"), recomputed = scratchDirectory("recompute-\(granularity)")
        defer { for path in [plain, recomputed] { try? FileManager.default.removeItem(atPath: path) } }
        var configuration = try configuration(output: plain)
        configuration.precision = "fp32"
        configuration.accumulateSteps = 2
        if layout == "pp" { try TrainingSettings.applyFlag("--pp", "2", to: &configuration) } else if layout == "tp" {
            try TrainingSettings.applyFlag("--tp", "2", to: &configuration)
        } else {
            configuration.dp = 2
            configuration.zeroStage = 3
        }
        let reference = try trainDistributed(configuration, ranks: 2)
        configuration.output = recomputed
        try TrainingSettings.applyFlag("--recompute", granularity, to: &configuration)
        let result = try trainDistributed(configuration, ranks: 2)
        #expect(result == reference, "\(layout) with \(granularity) recompute")
    }

    /// DDP with gradients all-reduced in bf16 trains close to the fp32 reduction (each reduced gradient element
    /// carries one bf16 rounding, relative 2^-9) and keeps the replicas identical.
    @Test func bf16GradientReductionStaysCloseToFP32() throws {
        let fp32Output = scratchDirectory("reduce-fp32"), bf16Output = scratchDirectory("reduce-bf16")
        defer { for path in [fp32Output, bf16Output] { try? FileManager.default.removeItem(atPath: path) } }
        var configuration = try configuration(output: fp32Output)
        configuration.precision = "fp32"
        configuration.dp = 2
        let reference = try trainDistributed(configuration, ranks: 2)
        configuration.output = bf16Output
        try TrainingSettings.applyFlag("--grad-reduce-dtype", "bf16", to: &configuration)
        #expect(configuration.ddp.gradientReduceDType == .bfloat16)
        let frozen = configuration
        let ranks = try LocalWorld.run(size: 2, threadsPerRank: 1) { group -> [[Float]] in
            let trainer = try Trainer(configuration: frozen, group: group)
            _ = try trainer.run()
            return trainer.model.parameters.map { $0.toArray() }
        }
        #expect(ranks[0] == ranks[1])
        let error = relativeError(ranks[0], reference)
        #expect(error > 0 && error <= 1e-2, "bf16 reduction vs fp32: \(error)")
    }

    /// ZeRO 1–3 reduce-scatter bf16 gradients as DDP all-reduces them: each rank rounds its fp32 gradient to bf16,
    /// the reduction adds in fp32 and rounds once, and the result is widened into fp32 gradients that are
    /// clipped and stepped in fp32 — per element the same arithmetic as DDP's bf16 all-reduce, so a bf16 ZeRO run
    /// with bf16 reduction trains what DDP with bf16 reduction trains within fp32's 1e-5 (measured: stages 1 and
    /// 2 bit-identical, stage 3 9e-8).
    @Test(arguments: [1, 2, 3])
    func zeroReducesGradientsInBF16LikeDDP(stage: Int) throws {
        let ddpOutput = scratchDirectory("reduce-bf16-ddp"), zeroOutput = scratchDirectory("reduce-bf16-zero\(stage)")
        defer { for path in [ddpOutput, zeroOutput] { try? FileManager.default.removeItem(atPath: path) } }
        var configuration = try configuration(output: ddpOutput)
        configuration.dp = 2
        try TrainingSettings.applyFlag("--grad-reduce-dtype", "bf16", to: &configuration)
        let reference = try trainDistributed(configuration, ranks: 2)
        configuration.output = zeroOutput
        configuration.zeroStage = stage
        let result = try trainDistributed(configuration, ranks: 2)
        let error = relativeError(result, reference)
        #expect(error <= 1e-5, "ZeRO-\(stage) with bf16 reduction vs DDP with bf16 reduction: relative error \(error)")
    }

    /// A bf16 run resumed from its checkpoint continues bit for bit as the run that was not interrupted: the
    /// checkpoint holds the fp32 masters (and the optimizer state), from which the bf16 compute copies are
    /// made again exactly.
    @Test(arguments: ["single", "zero1", "zero3", "dp"])
    func bf16ResumeIsBitIdentical(layout: String) throws {
        let whole = scratchDirectory("bf16-whole-\(layout)"), resumed = scratchDirectory("bf16-resumed-\(layout)")
        defer { for path in [whole, resumed] { try? FileManager.default.removeItem(atPath: path) } }
        var configuration = try configuration(output: whole, steps: 6)
        configuration.checkpointEvery = 3
        let ranks = layout == "single" ? 1 : 2
        if layout != "single" { configuration.dp = 2 }
        if layout.hasPrefix("zero") { configuration.zeroStage = Int(layout.dropFirst(4))! }
        let uninterrupted = try trainDistributed(configuration, ranks: ranks)
        var again = configuration
        again.output = resumed
        again.checkpointEvery = 0
        let continued = try trainDistributed(again, ranks: ranks, resume: whole + "/checkpoint")
        #expect(continued.map { $0.map(\.bitPattern) } == uninterrupted.map { $0.map(\.bitPattern) },
                "\(layout): resumed bf16 run differs from the uninterrupted one (relative \(relativeError(continued, uninterrupted)))")
    }

    @Test func settingsParseAndRefuseBadValues() throws {
        let parsed = try TrainingSettings.resolve(configFile: nil, flags: [("--precision", "bf16"), ("--loss-scale", "1024"), ("--recompute", "selective"), ("--recompute-layers", "2")])
        #expect(parsed.computePrecision == .bfloat16 && parsed.lossScale == "1024")
        #expect(parsed.activationRecompute == ActivationRecompute(granularity: .selective, layers: 2))
        #expect(try LossScaling(parsing: parsed.lossScale) == .fixed(1024))
        var fromTOML = TrainingConfiguration()
        try TrainingSettings.apply(toml: "[training]\nprecision = \"bf16\"\nloss_scale = \"dynamic\"\nrecompute = \"full\"\n", source: "t.toml", to: &fromTOML)
        #expect(fromTOML.precision == "bf16" && fromTOML.lossScale == "dynamic" && fromTOML.recompute == "full")
        #expect(TrainingSettings.tomlText(fromTOML).contains("precision = \"bf16\""))
        for (flag, value) in [("--precision", "fp16"), ("--loss-scale", "-2"), ("--loss-scale", "often"), ("--recompute", "some")] {
            #expect(throws: ConvoyError.self, "\(flag) \(value)") { try TrainingSettings.resolve(configFile: nil, flags: [(flag, value)]) }
        }
    }

    /// Makes the gradient flowing out of the model's first block non-finite at its `atForward`-th forward
    /// (0-based; one forward per step here), leaving the loss finite.
    static func injectInfGradient(into model: any LanguageModel, atForward target: Int) {
        let forwards = Counter()
        _ = model.layers[0].registerForwardPostHook { _, output in
            defer { forwards.value += 1 }
            guard forwards.value == target else { return output }
            let passthrough = Tensor(storage: output.storage, shape: output.shape, strides: output.strides, offset: output.offset)
            return Tensor.record(passthrough, operation: "inject Inf gradient", inputs: [output]) { gradient in
                [withNoGrad { gradient + Float.infinity }]
            }
        }
    }

    final class Counter: @unchecked Sendable {
        var value = 0
    }
}
