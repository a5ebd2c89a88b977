import ArgumentParser
import ConvoyComm
import ConvoyNN
import ConvoyParallel
import ConvoyTensor
import Foundation

/// `convoy bench pipeline`: the pipeline bubble of GPT training on Local ranks, measured from the trace, against
/// what ``PipelineSimulator`` predicts from the measured stage costs and what the Megatron formula gives.
struct BenchPipelineCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pipeline",
        abstract: "Train the benchmark GPT as a pipeline on P Local ranks × 1 thread (dp 1); report the bubble measured, simulated and by formula.",
        discussion: """
            Measured bubble: 1 − Σ busy / (pp · Σ window) over the timed steps. A rank's busy time is its forward and \
            backward spans; a step's window runs from the barrier before it to the end of the step's last backward on \
            any rank, so the gradient reduction and optimizer step after it do not count. Predicted bubble: \
            PipelineSimulator on the same schedule, with each virtual stage's mean measured forward and backward time \
            and free communication (send, receive, latency 0).
            """)

    @Option(help: "Pipeline stages (Local ranks, one thread each).") var pp: Int = 2
    @Option(name: .customLong("accumulate-steps"), help: "Micro-batches per step (m).") var accumulateSteps: Int = 8
    @Option(help: "Schedule: gpipe, 1f1b or interleaved-1f1b.") var schedule: String = "1f1b"
    @Option(name: .customLong("virtual-stages"), help: "Model chunks per rank (interleaved-1f1b only).") var virtualStages: Int = 1
    @OptionGroup var shape: ModelShapeOptions
    @Option(name: .customLong("micro-batch-size"), help: "Sequences per micro-batch.") var microBatchSize: Int = 1
    @Option(help: "Untimed warm-up steps.") var warmup: Int = 1
    @Option(help: "Timed steps.") var steps: Int = 3
    @Flag(help: "End with one JSON line of the results.") var json = false

    func validate() throws {
        for (name, value) in [("--pp", pp), ("--accumulate-steps", accumulateSteps), ("--virtual-stages", virtualStages),
                              ("--micro-batch-size", microBatchSize), ("--steps", steps)] where value <= 0 {
            throw ValidationError("\(name) must be positive, got \(value)")
        }
        guard warmup >= 0 else { throw ValidationError("--warmup must be 0 or more, got \(warmup)") }
        do { _ = try PipelineScheduleKind(parsing: schedule) } catch let error as ConvoyError {
            throw ValidationError("--schedule: \(error)")
        }
    }

    /// What one rank brings back.
    struct RankRun: Sendable {
        /// Uptime (ns) right after the barrier that starts each timed step.
        var stepStarts: [UInt64]
        /// Uptime after the barrier that follows the last step.
        var end: UInt64
        /// The most micro-batches stashed at once in any timed step.
        var peakStashed: Int
    }

    /// Trains `steps` timed steps after `warmup` on `pp` Local ranks, recording the executor's spans in `timeline`.
    func train(options: PipelineOptions, timeline: Timeline) throws -> [RankRun] {
        let configuration = shape.configuration
        let (warmup, steps, m, batch, time) = (self.warmup, self.steps, accumulateSteps, microBatchSize, shape.context)
        return try LocalWorld.run(size: pp, threadsPerRank: 1) { group -> RankRun in
            let model = try GPT(configuration, seed: 1)
            let pipeline = try PipelineParallel(
                model: model, world: group, options: options, microBatches: m, weightDecay: 0.1, timeline: timeline,
                makeOptimizer: { module, _ in
                    Adam.adamW(ParameterGroup.decayingMatrices(of: module, weightDecay: 0.1), learningRate: 3e-4, weightDecay: 0.1)
                },
                makeShardOptimizer: { Adam.adamW($0, learningRate: 3e-4, weightDecay: 0.1) })
            // One stream for every rank: the first stage reads a micro-batch's tokens, the last its targets, and
            // those must be the same micro-batch.
            let generator = PhiloxRandom(seed: 5, stream: 0)
            var run = RankRun(stepStarts: [], end: 0, peakStashed: 0)
            for step in 0..<(warmup + steps) {
                // Every step starts together, so a step's window has a common origin and no span crosses it.
                try group.barrier()
                if step >= warmup { run.stepStarts.append(Timeline.now) }
                let result = try pipeline.trainStep(maxGradientNorm: 0) { micro in
                    let offset = (step * m + micro) * batch * time
                    let tokens = (0..<(batch * time)).map { Int32(generator.block(UInt64(offset + $0)).0 % 256) }
                    return PipelineExecutor.MicroBatch(tokens: tokens, targets: tokens.map { ($0 + 1) % 256 }, batch: batch, time: time,
                                                       lossScale: 1 / Float(m), lossWeight: 1 / Double(m),
                                                       context: ForwardContext(training: true, step: step))
                }
                if step >= warmup { run.peakStashed = max(run.peakStashed, result.peakStashed) }
            }
            try group.barrier()
            run.end = Timeline.now
            return run
        }
    }

    /// The figures the trace gives.
    struct TraceAnalysis {
        /// Per rank: seconds in forward and backward spans over the timed steps.
        var busy: [Double]
        /// Per rank: seconds inside the step windows spent waiting on a peer: in receive spans, or in the
        /// end-of-step reduction that a rank done early enters while the others still compute.
        var waiting: [Double]
        /// Σ over the timed steps of (last backward end − step start), in seconds.
        var window: Double
        /// Per virtual stage: mean seconds of one micro-batch's forward and backward.
        var forwardCosts: [Double], backwardCosts: [Double]

        var bubble: Double { 1 - busy.reduce(0, +) / (Double(busy.count) * window) }
    }

    /// Reads busy time, step windows and per-stage costs from the spans of the timed steps.
    func analyze(_ spans: [Timeline.Span], runs: [RankRun], stageCount: Int) throws -> TraceAnalysis {
        // A step starts when the first rank leaves its barrier; every span of the step starts after that and ends
        // before the next step's barrier lets any rank go.
        let starts = (0..<steps).map { step in runs.map { $0.stepStarts[step] }.min()! }
        var busy = Array(repeating: 0.0, count: pp), waiting = busy, lastBackward = Array(repeating: UInt64(0), count: steps)
        var sums = (forward: Array(repeating: 0.0, count: stageCount), backward: Array(repeating: 0.0, count: stageCount))
        var counts = (forward: Array(repeating: 0, count: stageCount), backward: Array(repeating: 0, count: stageCount))
        var waits: [(step: Int, span: Timeline.Span)] = []
        for span in spans where ["forward", "backward", "receive", "reduce"].contains(span.category) {
            guard let step = starts.lastIndex(where: { $0 <= span.start }) else { continue }  // a warm-up span
            if span.category == "receive" || span.category == "reduce" {
                waits.append((step, span))
                continue
            }
            // Names are "forward mb I s S" / "backward mb I s S".
            guard let stage = span.name.split(separator: " ").last.flatMap({ Int($0) }), (0..<stageCount).contains(stage) else {
                throw ConvoyError.invalidConfiguration("unexpected pipeline span name \"\(span.name)\"; expected \"… mb I s S\"")
            }
            let seconds = Double(span.duration) / 1e9
            busy[span.rank] += seconds
            if span.category == "forward" {
                sums.forward[stage] += seconds
                counts.forward[stage] += 1
            } else {
                sums.backward[stage] += seconds
                counts.backward[stage] += 1
                lastBackward[step] = max(lastBackward[step], span.end)
            }
        }
        let window = zip(lastBackward, starts).map { Double($0 &- $1) / 1e9 }.reduce(0, +)
        // Only the part of a wait before its step's last backward ends lies inside the window.
        for (step, span) in waits where span.start < lastBackward[step] {
            waiting[span.rank] += Double(min(span.end, lastBackward[step]) - span.start) / 1e9
        }
        return TraceAnalysis(busy: busy, waiting: waiting, window: window,
                             forwardCosts: zip(sums.forward, counts.forward).map { $0 / Double(max($1, 1)) },
                             backwardCosts: zip(sums.backward, counts.backward).map { $0 / Double(max($1, 1)) })
    }

    func run() throws {
        var chosen = PipelineOptions()
        chosen.stages = pp
        chosen.schedule = try PipelineScheduleKind(parsing: schedule)
        chosen.virtualStages = virtualStages
        let options = chosen
        // Built here as well as on every rank, so a schedule or partition that does not fit fails once, before any
        // rank starts.
        let pipelineSchedule = try PipelineSchedule(kind: options.schedule, stages: pp, microBatches: accumulateSteps, virtualStages: virtualStages)
        let partition = try options.partition(for: shape.configuration.shape)

        let timeline = Timeline()
        let runs = try train(options: options, timeline: timeline)
        let trace = try analyze(timeline.allSpans, runs: runs, stageCount: partition.virtualStageCount)
        let costs = PipelineCostModel(forwardCosts: trace.forwardCosts, backwardCosts: trace.backwardCosts)
        let simulation = try PipelineSimulator(costModel: costs).simulate(pipelineSchedule)
        let formula = PipelineSchedule.bubbleFormula(stages: pp, microBatches: accumulateSteps, virtualStages: virtualStages)
        let start = runs.map { $0.stepStarts[0] }.min()!, end = runs.map(\.end).max()!
        let tokensPerSecond = Double(steps * accumulateSteps * microBatchSize * shape.context) / (Double(end - start) / 1e9)
        let peakStashed = runs.map(\.peakStashed).max()!

        print("# \(options.schedule.rawValue): pp \(pp) Local ranks × 1 thread, v \(virtualStages), m \(accumulateSteps) micro-batches × \(microBatchSize) sequence\(microBatchSize == 1 ? "" : "s"); \(shape.summary); AdamW; \(steps) timed step\(steps == 1 ? "" : "s") after \(warmup) warm-up")
        print("rank  blocks               busy (s)  idle share  of it waiting  peak stashed (measured / simulated)")
        for (rank, run) in runs.enumerated() {
            let blocks = partition.layerRanges(onRank: rank).map { $0.count == 1 ? "\($0.lowerBound)" : "\($0.lowerBound)–\($0.upperBound - 1)" }
            print(String(format: "%4d  %@  %8.3f  %10.3f  %13.3f  %d / %d", rank, blocks.joined(separator: ",").padding(toLength: 19, withPad: " ", startingAt: 0),
                         trace.busy[rank], 1 - trace.busy[rank] / trace.window, trace.waiting[rank] / trace.window,
                         run.peakStashed, simulation.peakStashedMicroBatches[rank]))
        }
        let stageCosts = (0..<partition.virtualStageCount).map { String(format: "s%d %.1f/%.1f", $0, 1e3 * trace.forwardCosts[$0], 1e3 * trace.backwardCosts[$0]) }
        print("stage costs (ms per micro-batch, forward/backward): " + stageCosts.joined(separator: ", "))
        print(String(format: "step window (s): %.3f measured, %.3f simulated (mean per step)", trace.window / Double(steps), simulation.computeEnd))
        print(String(format: "bubble: measured %.3f, predicted %.3f (simulator, measured stage costs, free communication), formula %.3f",
                     trace.bubble, simulation.bubbleFraction, formula))
        print(String(format: "tokens/s: %.0f", tokensPerSecond))
        if json {
            let object: [String: Any] = ["pp": pp, "accumulate_steps": accumulateSteps, "schedule": options.schedule.rawValue, "virtual_stages": virtualStages,
                                         "micro_batch_size": microBatchSize, "bubble_measured": trace.bubble, "bubble_predicted": simulation.bubbleFraction,
                                         "bubble_formula": formula, "peak_stashed_microbatches": peakStashed,
                                         "peak_stashed_per_rank": runs.map(\.peakStashed), "peak_stashed_simulated_per_rank": simulation.peakStashedMicroBatches,
                                         "busy_s_per_rank": trace.busy, "tokens_per_s": tokensPerSecond]
            print(String(decoding: try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]), as: UTF8.self))
        }
    }
}
