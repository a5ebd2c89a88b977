import Foundation
import Synchronization

/// Records timed spans (forward, backward, each bucket's all-reduce, optimizer step) per rank, for a
/// Chrome trace (`--trace FILE`) and for measuring how much communication overlaps computation.
public final class Timeline: Sendable {
    /// One span: `[start, end)` in uptime nanoseconds.
    public struct Span: Sendable, Equatable {
        public var name: String
        public var category: String
        public var rank: Int
        /// The lane within the rank ("compute", "comm").
        public var lane: String
        public var start: UInt64
        public var end: UInt64

        public var duration: UInt64 { end &- start }
    }

    private let spans = Mutex<[Span]>([])
    /// The origin of the trace's time axis.
    public let origin: UInt64

    public init() { origin = DispatchTime.now().uptimeNanoseconds }

    /// Now, in uptime nanoseconds.
    public static var now: UInt64 { DispatchTime.now().uptimeNanoseconds }

    /// Adds a finished span.
    public func record(_ name: String, category: String, rank: Int, lane: String = "compute", start: UInt64, end: UInt64) {
        let span = Span(name: name, category: category, rank: rank, lane: lane, start: start, end: Swift.max(start, end))
        spans.withLock { $0.append(span) }
    }

    /// Times `body` as a span.
    public func measure<Result>(_ name: String, category: String, rank: Int, lane: String = "compute", _ body: () throws -> Result) rethrows -> Result {
        let start = Self.now
        defer { record(name, category: category, rank: rank, lane: lane, start: start, end: Self.now) }
        return try body()
    }

    /// Every span recorded so far, in recording order.
    public var allSpans: [Span] { spans.withLock { $0 } }

    /// Removes every span (e.g. after warm-up).
    public func clear() { spans.withLock { $0.removeAll() } }

    /// The fraction of the time spent in spans of `communication` category that lies inside spans of
    /// `computation` category on the same rank (1 when all communication is hidden behind computation).
    public func overlapFraction(communication: String, computation: String) -> Double {
        let all = allSpans
        var total: UInt64 = 0, hidden: UInt64 = 0
        for span in all where span.category == communication {
            total += span.duration
            for other in all where other.category == computation && other.rank == span.rank {
                let start = Swift.max(span.start, other.start), end = Swift.min(span.end, other.end)
                if end > start { hidden += end - start }
            }
        }
        return total == 0 ? 0 : Double(hidden) / Double(total)
    }

    /// Nanoseconds during which rank `rank` had at least one span of `category` open: the union of those spans, so
    /// concurrent ones (several all-reduces in flight) count once.
    public func coveredNanoseconds(category: String, rank: Int) -> UInt64 {
        let intervals = allSpans.filter { $0.category == category && $0.rank == rank }.map { ($0.start, $0.end) }.sorted { $0.0 < $1.0 }
        var covered: UInt64 = 0
        var open: (start: UInt64, end: UInt64)?
        for (start, end) in intervals {
            if let current = open, start <= current.end {
                open = (current.start, Swift.max(current.end, end))
            } else {
                if let current = open { covered += current.end - current.start }
                open = (start, end)
            }
        }
        if let current = open { covered += current.end - current.start }
        return covered
    }

    /// The spans as Chrome trace JSON (the format chrome://tracing and Perfetto open): one process per rank,
    /// one thread per lane, complete ("X") events in microseconds.
    public func chromeTraceJSON() -> Data {
        let all = allSpans
        var lanes: [String: Int] = [:]
        var events: [[String: Any]] = []
        for span in all {
            let tid = lanes[span.lane] ?? { let id = lanes.count + 1; lanes[span.lane] = id; return id }()
            events.append([
                "name": span.name, "cat": span.category, "ph": "X", "pid": span.rank, "tid": tid,
                "ts": Double(span.start &- origin) / 1000, "dur": Double(span.duration) / 1000,
            ])
        }
        for rank in Set(all.map(\.rank)).sorted() {
            events.append(["name": "process_name", "ph": "M", "pid": rank, "args": ["name": "rank \(rank)"]])
            for (lane, tid) in lanes {
                events.append(["name": "thread_name", "ph": "M", "pid": rank, "tid": tid, "args": ["name": lane]])
            }
        }
        return (try? JSONSerialization.data(withJSONObject: ["traceEvents": events, "displayTimeUnit": "ms"], options: [.sortedKeys])) ?? Data()
    }
}
