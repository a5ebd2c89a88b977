import ConvoyTensor
import Foundation

/// What `convoy report` shows of a run directory: its metrics, configuration, parallel plan and (when the
/// run was traced) each rank's time per phase, as one self-contained HTML page (inline CSS and SVG, no
/// scripts, nothing fetched).
public struct RunReport {
    public let directory: String
    /// The records of `metrics.jsonl`, in file order.
    public let records: [[String: Any]]
    /// `config.toml` as the run wrote it.
    public let configurationText: String?
    public let plan: RunPlanSummary?
    /// The per-rank phase totals, when a trace was found.
    public let trace: TraceSummary?
    /// The trace files read, or why there are none.
    public let traceNote: String
    /// The TensorBoard event files of the run.
    public let eventFiles: [String]

    /// Reads the run directory `directory`.
    ///
    /// - Throws: ``ConvoyError/io(_:)`` when `directory` does not exist or is not a Convoy run directory (no
    ///   `metrics.jsonl`); ``ConvoyError/malformedFile(path:reason:)`` for a metrics line that is not JSON
    ///   (other than a last line cut short by a killed run).
    public init(directory: String) throws {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: directory, isDirectory: &isDirectory) else {
            throw ConvoyError.io("\(directory) does not exist; give the --output directory of a `convoy train` run")
        }
        guard isDirectory.boolValue else {
            throw ConvoyError.io("\(directory) is a file, not a run directory; give the --output directory of a `convoy train` run")
        }
        let metricsPath = directory + "/" + RunDirectory.metricsFileName
        guard let metrics = FileManager.default.contents(atPath: metricsPath) else {
            let entries = ((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []).sorted()
            throw ConvoyError.io("\(directory) is not a Convoy run directory: it has no \(RunDirectory.metricsFileName) (it holds \(entries.isEmpty ? "nothing" : entries.prefix(4).joined(separator: ", ") + (entries.count > 4 ? ", …" : ""))); give the --output directory of a `convoy train` run")
        }
        self.directory = directory
        let lines = String(decoding: metrics, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: true)
        var records: [[String: Any]] = []
        for (index, line) in lines.enumerated() {
            guard let record = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] else {
                if index == lines.count - 1 { continue }  // a run killed mid-write leaves a partial last line
                throw ConvoyError.malformedFile(path: metricsPath, reason: "line \(index + 1) is not a JSON object")
            }
            records.append(record)
        }
        self.records = records
        configurationText = FileManager.default.contents(atPath: directory + "/" + RunDirectory.configurationFileName).map { String(decoding: $0, as: UTF8.self) }
        plan = try RunPlanSummary.read(from: directory)
        eventFiles = EventFileReader.eventFiles(in: directory)
        let traceFiles = Self.traceFiles(directory: directory, configurationText: configurationText)
        if traceFiles.isEmpty {
            trace = nil
            traceNote = "This run was not traced. Train with --trace FILE (for instance --trace \(directory)/trace.json) to record forward, backward, communication and optimizer spans per rank; the report reads the trace from the path config.toml names, or trace.json in the run directory."
        } else {
            trace = try TraceSummary(traceFiles: traceFiles)
            traceNote = "From " + traceFiles.joined(separator: ", ") + "."
        }
    }

    /// The values of `key` over the records that have it, by step.
    public func series(_ key: String) -> [(x: Double, y: Double)] {
        records.compactMap { record in
            guard let step = JSONNumber.double(record["step"]), let value = JSONNumber.double(record[key]) else { return nil }
            return (step, value)
        }
    }

    /// The trace of the run: the `--trace` path config.toml names (as given, then relative to the run
    /// directory), else `trace.json` in the run directory; with the per-rank files MPI runs add
    /// (`PATH.rankN.json`).
    static func traceFiles(directory: String, configurationText: String?) -> [String] {
        var candidates: [String] = []
        if let text = configurationText {
            var configuration = TrainingConfiguration()
            try? TrainingSettings.apply(toml: text, source: "config.toml", to: &configuration)
            if let trace = configuration.trace {
                candidates.append(trace)
                if !trace.hasPrefix("/") { candidates.append(directory + "/" + trace) }
            }
        }
        candidates.append(directory + "/trace.json")
        guard let main = candidates.first(where: { FileManager.default.fileExists(atPath: $0) }) else { return [] }
        var files = [main]
        var rank = 1
        while FileManager.default.fileExists(atPath: main + ".rank\(rank).json") {
            files.append(main + ".rank\(rank).json")
            rank += 1
        }
        return files
    }}
