import ConvoyTensor
import Foundation

/// Per-rank time in each phase of training, from the Chrome trace `--trace` writes (one process per rank, a
/// `compute` lane for the rank's own thread and a `comm` lane for collectives running beside it).
///
/// How spans become phases:
/// - forward, backward, optimizer: the spans of those categories.
/// - bubble: time a pipeline stage blocks in `receive`, waiting for its neighbour's activation or gradient.
///   Within one host the transfer itself is a small part of it, so it is counted as waiting.
/// - communication: time the rank's own thread spends in communication (posting pipeline sends, reducing
///   gradients), plus collectives on the `comm` lane while the rank computes nothing (exposed). Collective
///   time hidden behind computation is reported apart, as ``RankPhases/overlappedCommunication``.
public struct TraceSummary: Sendable {
    /// One rank's totals, in seconds.
    public struct RankPhases: Sendable, Equatable {
        public var rank: Int
        public var forward = 0.0
        public var backward = 0.0
        public var communication = 0.0
        public var bubble = 0.0
        public var optimizer = 0.0
        /// Collective time on the `comm` lane that lies inside the rank's compute spans.
        public var overlappedCommunication = 0.0
        /// Optimizer steps traced.
        public var steps = 0

        /// The five phases' sum.
        public var total: Double { forward + backward + communication + bubble + optimizer }
    }

    public let ranks: [RankPhases]

    /// Summarises the Chrome trace files `paths` (one file, or one per MPI rank).
    ///
    /// - Throws: ``ConvoyError/malformedFile(path:reason:)`` when a file is not a Chrome trace.
    public init(traceFiles paths: [String]) throws {
        var spans: [Int: (compute: [(Double, Double, String)], comm: [(Double, Double)])] = [:]
        for path in paths {
            guard let data = FileManager.default.contents(atPath: path) else { throw ConvoyError.io("cannot read the trace \(path)") }
            guard let root = try? JSONSerialization.jsonObject(with: data) as? [String: Any], let events = root["traceEvents"] as? [[String: Any]] else {
                throw ConvoyError.malformedFile(path: path, reason: "not a Chrome trace (a JSON object with traceEvents)")
            }
            var laneNames: [[Int]: String] = [:]
            for event in events where event["ph"] as? String == "M" && event["name"] as? String == "thread_name" {
                if let pid = event["pid"] as? Int, let tid = event["tid"] as? Int, let name = (event["args"] as? [String: Any])?["name"] as? String {
                    laneNames[[pid, tid]] = name
                }
            }
            for event in events where event["ph"] as? String == "X" {
                guard let rank = event["pid"] as? Int, let start = JSONNumber.double(event["ts"]), let duration = JSONNumber.double(event["dur"]) else { continue }
                let lane = laneNames[[rank, event["tid"] as? Int ?? 0]] ?? "compute"
                let interval = (start / 1e6, (start + duration) / 1e6)
                if lane == "comm" {
                    spans[rank, default: ([], [])].comm.append(interval)
                } else {
                    spans[rank, default: ([], [])].compute.append((interval.0, interval.1, event["cat"] as? String ?? ""))
                }
            }
        }
        ranks = spans.keys.sorted().map { rank in
            var phases = RankPhases(rank: rank)
            let (compute, comm) = spans[rank]!
            for (start, end, category) in compute {
                let seconds = end - start
                switch category {
                case "forward": phases.forward += seconds
                case "backward": phases.backward += seconds
                case "optimizer step", "optimizer":
                    phases.optimizer += seconds
                    phases.steps += 1
                case "receive": phases.bubble += seconds
                default: phases.communication += seconds
                }
            }
            let computing = Self.union(compute.map { ($0.0, $0.1) }), communicating = Self.union(comm)
            let hidden = Self.intersection(computing, communicating)
            phases.overlappedCommunication = hidden
            phases.communication += Self.length(communicating) - hidden
            return phases
        }
    }

    /// Sorted, non-overlapping intervals covering the same time as `intervals`.
    static func union(_ intervals: [(Double, Double)]) -> [(Double, Double)] {
        var merged: [(Double, Double)] = []
        for (start, end) in intervals.sorted(by: { $0.0 < $1.0 }) {
            if let last = merged.last, start <= last.1 {
                merged[merged.count - 1].1 = max(last.1, end)
            } else {
                merged.append((start, end))
            }
        }
        return merged
    }

    static func length(_ intervals: [(Double, Double)]) -> Double { intervals.reduce(0) { $0 + $1.1 - $1.0 } }

    /// The time two sorted, non-overlapping interval lists share.
    static func intersection(_ a: [(Double, Double)], _ b: [(Double, Double)]) -> Double {
        var i = 0, j = 0, shared = 0.0
        while i < a.count && j < b.count {
            let start = max(a[i].0, b[j].0), end = min(a[i].1, b[j].1)
            if end > start { shared += end - start }
            if a[i].1 < b[j].1 { i += 1 } else { j += 1 }
        }
        return shared
    }
}
