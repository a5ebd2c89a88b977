import ConvoyComm
import ConvoyTensor
import ConvoyTrain
import Foundation
#if canImport(FoundationXML)
import FoundationXML
#endif
import Testing

/// Collects what the report's markup holds; parsing it at all proves it is well-formed XML.
private final class MarkupCollector: NSObject, XMLParserDelegate {
    var elements: [String: Int] = [:]
    var series: [(name: String, points: Int, path: String)] = []
    var cells: [String: String] = [:]
    var headings: [String] = []
    private var text = ""
    private var openID: String?
    private var inHeading = false

    func parser(_ parser: XMLParser, didStartElement name: String, namespaceURI: String?, qualifiedName: String?, attributes: [String: String] = [:]) {
        elements[name, default: 0] += 1
        if name == "path", let series = attributes["data-series"] {
            self.series.append((series, Int(attributes["data-points"] ?? "") ?? -1, attributes["d"] ?? ""))
        }
        if name == "td", let id = attributes["id"] { openID = id; text = "" }
        if name == "h2" { inHeading = true; text = "" }
    }

    func parser(_ parser: XMLParser, foundCharacters string: String) { text += string }

    func parser(_ parser: XMLParser, didEndElement name: String, namespaceURI: String?, qualifiedName: String?) {
        if name == "td", let id = openID { cells[id] = text; openID = nil }
        if name == "h2" { headings.append(text); inHeading = false }
    }
}

private func parse(_ html: String) throws -> MarkupCollector {
    let collector = MarkupCollector()
    let parser = XMLParser(data: Data(html.utf8))
    parser.delegate = collector
    guard parser.parse() else { throw ConvoyError.invalidArgument("the report is not well-formed: \(parser.parserError.map { "\($0)" } ?? "?") at line \(parser.lineNumber)") }
    return collector
}

@Suite struct RunReportTests {
    /// A real two-stage pipeline run, traced: the page parses as XML and shows the run's own numbers.
    @Test func reportOfATracedPipelineRun() throws {
        let output = scratchDirectory("report")
        defer { try? FileManager.default.removeItem(atPath: output) }
        var configuration = try tinyConfiguration(output: output, steps: 8)
        try TrainingSettings.applyFlag("--layers", "2", to: &configuration)
        try TrainingSettings.applyFlag("--pp", "2", to: &configuration)
        try TrainingSettings.applyFlag("--accumulate-steps", "2", to: &configuration)
        configuration.evalEvery = 4
        configuration.trace = output + "/trace.json"
        let frozen = configuration
        let timeline = Timeline()
        _ = try LocalWorld.run(size: 2, threadsPerRank: 1) { group in
            try Trainer(configuration: frozen, group: group, timeline: timeline).run()
        }
        try timeline.chromeTraceJSON().write(to: URL(fileURLWithPath: output + "/trace.json"))

        let report = try RunReport(directory: output)
        let html = report.html(planDetail: "rank  pp\n   0  0\n   1  1")
        let markup = try parse(html)
        #expect(markup.headings == ["Summary", "Curves", "Configuration", "Parallel plan", "Time per rank", "TensorBoard"])
        // Nothing fetched: no scripts, links or imports; the only URLs are the XML namespaces.
        #expect(!html.contains("<script"))
        #expect(html.components(separatedBy: "http").count - 1 == markup.elements["svg", default: 0] + 1)
        #expect(!html.contains("https://") && !html.contains("<link") && !html.contains("@import") && !html.contains("url("))

        let records = try String(contentsOfFile: output + "/metrics.jsonl", encoding: .utf8).split(separator: "\n")
            .compactMap { try JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
        let losses = records.compactMap { $0["loss"] as? Double }
        let validation = records.compactMap { $0["val_loss"] as? Double }
        #expect(losses.count == 8 && validation.count == 2)
        #expect(markup.cells["final-loss"] == String(format: "%.4f", losses.last!))
        #expect(markup.cells["final-validation-loss"] == String(format: "%.4f", validation.last!))
        #expect(markup.cells["last-step"] == "8")
        #expect(markup.cells["world-size"] == "2")
        let training = try #require(markup.series.first { $0.name == "training loss" })
        #expect(training.points == losses.count)
        #expect(training.path.split(separator: " ").count == losses.count)
        #expect(markup.series.first { $0.name == "validation loss" }?.points == 2)
        for name in ["learning rate", "tokens/s", "gradient norm"] { #expect(markup.series.contains { $0.name == name }, "no \(name) curve") }
        // The highest loss is drawn highest (smallest y) and the lowest lowest.
        let ys = training.path.split(separator: " ").map { Double($0.dropFirst().split(separator: ",")[1])! }
        #expect(ys[losses.firstIndex(of: losses.max()!)!] == ys.min()! && ys[losses.firstIndex(of: losses.min()!)!] == ys.max()!)

        #expect(html.contains("pp 2"))
        #expect(html.contains("pipeline parallelism"))
        #expect(html.contains("rank  pp"))
        #expect(html.contains("[model]") || html.contains("layers = 2"))

        let trace = try #require(report.trace)
        #expect(trace.ranks.map(\.rank) == [0, 1])
        for rank in trace.ranks {
            #expect(rank.steps == 8)
            #expect(rank.forward > 0 && rank.backward > 0 && rank.optimizer > 0)
            // Each stage waits in receive for the other (activations forward, gradients back).
            #expect(rank.bubble > 0)
        }
        #expect(markup.elements["rect", default: 0] >= 2 * 3)
        #expect(html.contains("events.out.tfevents."))
    }

    @Test func untracedRunSaysHowToTrace() throws {
        let output = scratchDirectory("report-plain")
        defer { try? FileManager.default.removeItem(atPath: output) }
        _ = try Trainer(configuration: try tinyConfiguration(output: output, steps: 3)).run()
        let report = try RunReport(directory: output)
        #expect(report.trace == nil)
        let markup = try parse(report.html())
        #expect(markup.headings.contains("Time per rank"))
        #expect(report.html().contains("was not traced"))
        #expect(report.plan?.worldSize == 1)
    }

    @Test func missingAndForeignDirectoriesAreRefused() throws {
        let scratch = scratchDirectory("report-bad")
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        func message(_ path: String) -> String {
            do { _ = try RunReport(directory: path); return "" } catch { return "\(error)" }
        }
        #expect(message(scratch).contains("does not exist"))
        try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
        try Data("x".utf8).write(to: URL(fileURLWithPath: scratch + "/notes.txt"))
        #expect(message(scratch).contains("not a Convoy run directory") && message(scratch).contains("notes.txt"))
        #expect(message(scratch + "/notes.txt").contains("is a file"))
        try Data("{\"step\": 1, \"loss\": 2}\nnot json\n{\"step\": 2}\n".utf8).write(to: URL(fileURLWithPath: scratch + "/metrics.jsonl"))
        #expect(message(scratch).contains("line 2"))
        // A last line cut short by a killed run is skipped.
        try Data("{\"step\": 1, \"loss\": 2}\n{\"step\": 2, \"lo".utf8).write(to: URL(fileURLWithPath: scratch + "/metrics.jsonl"))
        #expect(try RunReport(directory: scratch).records.count == 1)
    }

    /// Phases from a hand-made trace: categories on the compute lane, and all-reduce on the comm lane counted
    /// as communication only where no compute span covers it.
    @Test func traceSummaryAssignsPhases() throws {
        let scratch = scratchDirectory("trace-summary")
        try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        func span(_ category: String, rank: Int, tid: Int, start: Double, duration: Double) -> [String: Any] {
            ["name": category, "cat": category, "ph": "X", "pid": rank, "tid": tid, "ts": start, "dur": duration]
        }
        let events: [[String: Any]] = [
            span("forward", rank: 0, tid: 1, start: 0, duration: 100), span("backward", rank: 0, tid: 1, start: 100, duration: 200),
            span("allreduce", rank: 0, tid: 2, start: 250, duration: 100), span("allreduce", rank: 0, tid: 2, start: 260, duration: 40),  // 50 hidden, 50 exposed
            span("optimizer step", rank: 0, tid: 1, start: 350, duration: 30),
            span("receive", rank: 1, tid: 1, start: 0, duration: 100), span("forward", rank: 1, tid: 1, start: 100, duration: 50),
            span("send", rank: 1, tid: 1, start: 150, duration: 5), span("reduce", rank: 1, tid: 1, start: 155, duration: 20),
            span("optimizer step", rank: 1, tid: 1, start: 175, duration: 25),
            ["name": "thread_name", "ph": "M", "pid": 0, "tid": 1, "args": ["name": "compute"]], ["name": "thread_name", "ph": "M", "pid": 0, "tid": 2, "args": ["name": "comm"]],
            ["name": "thread_name", "ph": "M", "pid": 1, "tid": 1, "args": ["name": "compute"]],
        ]
        let path = scratch + "/trace.json"
        try JSONSerialization.data(withJSONObject: ["traceEvents": events]).write(to: URL(fileURLWithPath: path))
        let summary = try TraceSummary(traceFiles: [path])
        #expect(summary.ranks.count == 2)
        let (zero, one) = (summary.ranks[0], summary.ranks[1])
        func close(_ a: Double, _ b: Double) -> Bool { abs(a - b) < 1e-12 }
        #expect(close(zero.forward, 100e-6) && close(zero.backward, 200e-6) && close(zero.optimizer, 30e-6))
        #expect(close(zero.communication, 50e-6) && close(zero.overlappedCommunication, 50e-6) && zero.bubble == 0 && zero.steps == 1)
        #expect(close(one.bubble, 100e-6) && close(one.forward, 50e-6) && close(one.communication, 25e-6) && close(one.optimizer, 25e-6))
        try Data("[]".utf8).write(to: URL(fileURLWithPath: path))
        #expect(throws: ConvoyError.self) { try TraceSummary(traceFiles: [path]) }
    }
}
