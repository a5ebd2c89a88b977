import Foundation

extension RunReport {
    /// The report as one self-contained page: XHTML-compatible markup (every element closed, only XML's own
    /// entities), inline CSS, inline SVG charts, no scripts and nothing loaded from anywhere.
    ///
    /// - Parameter planDetail: the layout table `convoy plan` prints for the run's configuration, when the
    ///   caller could rebuild it.
    public func html(planDetail: String? = nil) -> String {
        var body = "<h1>Convoy run report</h1>\n<p class=\"directory\">\(HTMLText.escaped(directory))</p>\n"
        body += summarySection() + curvesSection() + configurationSection() + planSection(planDetail) + traceSection() + tensorBoardSection()
        return """
            <!DOCTYPE html>
            <html xmlns="http://www.w3.org/1999/xhtml" lang="en">
            <head>
            <meta charset="utf-8"/>
            <title>Convoy run report: \(HTMLText.escaped(directory))</title>
            <style>\(Self.styleSheet)</style>
            </head>
            <body>
            \(body)</body>
            </html>

            """
    }

    static let styleSheet = """
        body { font-family: sans-serif; margin: 24px auto; max-width: 1340px; color: #222; background: #fff; }
        h1 { margin-bottom: 0; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 4px; margin-top: 32px; }
        .directory { color: #666; font-family: monospace; }
        table { border-collapse: collapse; margin: 8px 0; } td, th { border: 1px solid #ddd; padding: 4px 10px; text-align: right; }
        th { background: #f4f4f4; } td.name, th.name { text-align: left; }
        pre { background: #f7f7f7; border: 1px solid #e4e4e4; padding: 10px; overflow-x: auto; font-size: 13px; }
        .charts { display: flex; flex-wrap: wrap; gap: 16px; }
        svg.chart { border: 1px solid #e4e4e4; background: #fff; }
        svg .plot { fill: #fcfcfc; stroke: #bbb; } svg .grid { stroke: #eee; } svg .tick, svg .legend, svg .axis-label { font-size: 11px; fill: #444; }
        svg .chart-title { font-size: 13px; font-weight: bold; fill: #222; }
        .note { color: #555; }
        """

    private func summarySection() -> String {
        let losses = series("loss"), validation = series("val_loss").isEmpty ? series("val_logloss") : series("val_loss")
        let throughput = throughputSeries
        var rows: [(String, String, String)] = []
        if let last = records.compactMap({ JSONNumber.double($0["step"]) }).max() { rows.append(("last-step", "last step", String(Int(last)))) }
        if let last = losses.last { rows.append(("final-loss", "final training loss", String(format: "%.4f", last.y))) }
        if let last = validation.last { rows.append(("final-validation-loss", "final validation loss", String(format: "%.4f", last.y))) }
        if let auc = series("val_auc").last { rows.append(("final-validation-auc", "final validation AUC", String(format: "%.4f", auc.y))) }
        if let accuracy = series("accuracy").last { rows.append(("accuracy", "held-out accuracy", String(format: "%.1f%%", accuracy.y * 100))) }
        if !throughput.points.isEmpty {
            let mean = throughput.points.map(\.y).reduce(0, +) / Double(throughput.points.count)
            rows.append(("mean-throughput", "mean \(throughput.unit)", String(format: "%.0f", mean)))
        }
        if let elapsed = records.compactMap({ JSONNumber.double($0["elapsed_s"]) }).max() { rows.append(("elapsed", "elapsed", String(format: "%.1f s", elapsed))) }
        if let plan {
            rows.append(("parameters", "parameters", String(plan.parameters)))
            rows.append(("world-size", "ranks", String(plan.worldSize)))
        }
        let skipped = records.filter { $0["skipped"] as? Bool == true }.count
        if skipped > 0 { rows.append(("skipped-steps", "steps skipped by loss scaling", String(skipped))) }
        return "<h2>Summary</h2>\n<table>\n" + rows.map { "<tr><th class=\"name\">\($0.1)</th><td id=\"\($0.0)\">\(HTMLText.escaped($0.2))</td></tr>\n" }.joined() + "</table>\n"
    }

    private var throughputSeries: (points: [(x: Double, y: Double)], unit: String) {
        let tokens = series("tokens_per_s")
        return tokens.isEmpty ? (series("samples_per_s"), "samples/s") : (tokens, "tokens/s")
    }

    private func curvesSection() -> String {
        let throughput = throughputSeries
        let charts = [
            SVGLineChart(title: "Loss", series: [.init(name: "training loss", color: "#1f77b4", points: series("loss")),
                                                 .init(name: "validation loss", color: "#d62728", points: series("val_loss")),
                                                 .init(name: "validation log loss", color: "#d62728", points: series("val_logloss"))]),
            SVGLineChart(title: "Learning rate", series: [.init(name: "learning rate", color: "#2ca02c", points: series("lr"))]),
            SVGLineChart(title: "Throughput (\(throughput.unit))", series: [.init(name: throughput.unit, color: "#9467bd", points: throughput.points)]),
            SVGLineChart(title: "Gradient norm (before clipping)", series: [.init(name: "gradient norm", color: "#ff7f0e", points: series("grad_norm"))]),
            SVGLineChart(title: "Loss scale", series: [.init(name: "loss scale", color: "#8c564b", points: series("loss_scale"))]),
            SVGLineChart(title: "Validation AUC", series: [.init(name: "AUC", color: "#17becf", points: series("val_auc"))]),
        ].filter { !$0.isEmpty }
        guard !charts.isEmpty else { return "<h2>Curves</h2>\n<p class=\"note\">metrics.jsonl holds no logged steps yet.</p>\n" }
        return "<h2>Curves</h2>\n<div class=\"charts\">\n" + charts.map { $0.svg() + "\n" }.joined() + "</div>\n"
    }

    private func configurationSection() -> String {
        guard let configurationText else { return "<h2>Configuration</h2>\n<p class=\"note\">The run directory holds no config.toml.</p>\n" }
        return "<h2>Configuration</h2>\n<p class=\"note\">config.toml, the effective settings of the run:</p>\n<pre id=\"configuration\">\(HTMLText.escaped(configurationText))</pre>\n"
    }

    private func planSection(_ detail: String?) -> String {
        var section = "<h2>Parallel plan</h2>\n"
        guard let plan else {
            return section + "<p class=\"note\">The run directory holds no \(RunPlanSummary.fileName) (runs before Convoy recorded it).</p>\n"
        }
        var rows = [("model", plan.model), ("ranks", String(plan.worldSize)), ("layout", plan.layout)]
        if !plan.mesh.isEmpty { rows.insert(("mesh", plan.mesh.map { "\($0.axis) \($0.size)" }.joined(separator: " × ") + " (fastest-varying first)"), at: 2) }
        rows.append(("features", plan.features.isEmpty ? "none" : plan.features.joined(separator: "; ")))
        section += "<table id=\"plan\">\n" + rows.map { "<tr><th class=\"name\">\($0.0)</th><td class=\"name\">\(HTMLText.escaped($0.1))</td></tr>\n" }.joined() + "</table>\n"
        if let detail { section += "<pre id=\"plan-detail\">\(HTMLText.escaped(detail))</pre>\n" }
        return section
    }

    static let phaseColors = [("forward", "#4e79a7"), ("backward", "#f28e2b"), ("communication", "#e15759"), ("bubble", "#bab0ac"), ("optimizer", "#59a14f")]

    private func traceSection() -> String {
        var section = "<h2>Time per rank</h2>\n"
        guard let trace, !trace.ranks.isEmpty else { return section + "<p class=\"note\">\(HTMLText.escaped(traceNote))</p>\n" }
        section += "<p class=\"note\">Seconds over the traced steps (per step in parentheses). \(HTMLText.escaped(traceNote)) Bubble: time a pipeline stage waits in receive for its neighbour. Communication: time the rank's own thread spends communicating plus collectives not hidden behind its computation; the hidden part is shown apart.</p>\n"
        section += "<table id=\"trace\">\n<tr><th>rank</th><th>steps</th>" + Self.phaseColors.map { "<th>\($0.0)</th>" }.joined() + "<th>total</th><th>communication hidden</th></tr>\n"
        for rank in trace.ranks {
            let values = [rank.forward, rank.backward, rank.communication, rank.bubble, rank.optimizer]
            func cell(_ seconds: Double) -> String {
                rank.steps > 0 ? String(format: "%.3f (%.2f ms)", seconds, seconds / Double(rank.steps) * 1000) : String(format: "%.3f", seconds)
            }
            section += "<tr><td>\(rank.rank)</td><td>\(rank.steps)</td>" + values.map { "<td>\(cell($0))</td>" }.joined()
                + "<td>\(cell(rank.total))</td><td>\(cell(rank.overlappedCommunication))</td></tr>\n"
        }
        return section + "</table>\n" + phaseBars(trace) + "\n"
    }

    /// One horizontal bar per rank, its phases stacked in proportion to their time.
    private func phaseBars(_ trace: TraceSummary) -> String {
        let width = 760.0, barHeight = 18.0, left = 64.0, right = 16.0
        func f(_ value: Double) -> String { String(format: "%.1f", value) }
        let longest = max(trace.ranks.map(\.total).max() ?? 0, 1e-12)
        let height = 30 + Double(trace.ranks.count) * (barHeight + 6) + 24
        var svg = "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"chart\" id=\"phase-bars\" width=\"\(Int(width))\" height=\"\(Int(height))\" viewBox=\"0 0 \(Int(width)) \(Int(height))\" role=\"img\"><title>Time per rank by phase</title>"
        for (row, rank) in trace.ranks.enumerated() {
            let y = 12 + Double(row) * (barHeight + 6)
            svg += "<text class=\"tick\" x=\"\(left - 8)\" y=\"\(f(y + 13))\" text-anchor=\"end\">rank \(rank.rank)</text>"
            var x = left
            for ((name, color), seconds) in zip(Self.phaseColors, [rank.forward, rank.backward, rank.communication, rank.bubble, rank.optimizer]) {
                let span = seconds / longest * (width - left - right)
                guard span > 0 else { continue }
                svg += "<rect class=\"phase\" data-phase=\"\(name)\" x=\"\(f(x))\" y=\"\(f(y))\" width=\"\(f(span))\" height=\"\(f(barHeight))\" fill=\"\(color)\"><title>\(name): \(String(format: "%.3f", seconds)) s</title></rect>"
                x += span
            }
        }
        var legendX = left
        let legendY = height - 10
        for (name, color) in Self.phaseColors {
            svg += "<rect x=\"\(f(legendX))\" y=\"\(f(legendY - 10))\" width=\"12\" height=\"12\" fill=\"\(color)\"/><text class=\"legend\" x=\"\(f(legendX + 16))\" y=\"\(f(legendY))\">\(name)</text>"
            legendX += 120
        }
        return svg + "</svg>"
    }

    private func tensorBoardSection() -> String {
        var section = "<h2>TensorBoard</h2>\n"
        guard !eventFiles.isEmpty else { return section + "<p class=\"note\">No TensorBoard event files in the run directory.</p>\n" }
        section += "<p class=\"note\">The same scalars as TensorBoard event files: <code>tensorboard --logdir \(HTMLText.escaped(directory))</code></p>\n<ul>\n"
        return section + eventFiles.map { "<li><code>\(HTMLText.escaped(URL(fileURLWithPath: $0).lastPathComponent))</code></li>\n" }.joined() + "</ul>\n"
    }
}
