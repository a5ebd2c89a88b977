import Foundation
import Synchronization

/// A handle on an asynchronous communication operation.
///
/// The operation runs on its group's communication thread; `wait` blocks until it has finished (or the
/// timeout passes) and rethrows its error. Operations on one group complete in the order they were issued.
public final class Work: @unchecked Sendable {
    private let condition = NSCondition()
    private var finished = false
    private var failure: Error?
    /// The backend that polls its operations on the waiting thread, if it does (MPI); otherwise a waiter sleeps
    /// until the backend's own thread finishes the operation.
    private let driver: (any WorkDriver)?
    /// Builds ``summary`` when it is first needed: most operations succeed and never show it, and formatting
    /// it costs microseconds, a visible share of a small operation.
    private var describe: (() -> String)?
    private var summaryText: String?

    public init(summary: String) {
        self.summaryText = summary
        self.driver = nil
    }

    init(driver: any WorkDriver, summary describe: @escaping () -> String) {
        self.describe = describe
        self.driver = driver
    }

    /// What the operation is, for timeout messages ("all-reduce #12 on group dp").
    public var summary: String {
        condition.lock()
        defer { condition.unlock() }
        if let summaryText { return summaryText }
        let text = describe?() ?? ""
        summaryText = text
        describe = nil
        return text
    }

    /// A work item that is already complete.
    public static func completed(_ summary: String, error: Error? = nil) -> Work {
        let work = Work(summary: summary)
        work.finish(error: error)
        return work
    }

    /// When the operation finished (`DispatchTime` uptime nanoseconds), for timelines.
    public var completionTime: UInt64? {
        condition.lock()
        defer { condition.unlock() }
        return finishedAt
    }
    private var finishedAt: UInt64?

    /// Marks the operation finished (called by the backend); a probe passes what it found.
    public func finish(error: Error? = nil, probed: ProbedMessage? = nil) {
        condition.lock()
        finishedAt = DispatchTime.now().uptimeNanoseconds
        finished = true
        failure = error
        probedMessage = probed
        condition.broadcast()
        condition.unlock()
    }

    /// Whether the operation has finished (successfully or not).
    public var isCompleted: Bool {
        condition.lock()
        defer { condition.unlock() }
        return finished
    }

    /// What a finished ``ProcessGroup/probeAsync(tag:dtype:)`` found (nil for every other operation).
    public var probed: ProbedMessage? {
        condition.lock()
        defer { condition.unlock() }
        return probedMessage
    }
    private var probedMessage: ProbedMessage?

    /// The operation's error, once it has finished with one.
    public var error: Error? {
        condition.lock()
        defer { condition.unlock() }
        return failure
    }

    /// Waits for the operation and rethrows its error; throws ``CommunicationError/timedOut`` when it has not
    /// finished within `timeout` seconds. The default outlasts the operation's own timeouts (each phase of an
    /// operation has one, and it may queue behind earlier operations of its group), so the operation's own,
    /// more precise error — which ranks did not arrive — is what the caller sees.
    public func wait(timeout: Double? = nil) throws {
        let limit = timeout ?? 3 * CommunicationTimeout.seconds + 5
        if let driver { driver.drive(until: self, deadline: .now + .seconds(limit)) }
        // A driver returns once the operation has finished or the limit has passed.
        let deadline = Date().addingTimeInterval(driver == nil ? limit : 0)
        condition.lock()
        while !finished {
            if !condition.wait(until: deadline) && !finished {
                condition.unlock()
                throw CommunicationError.timedOut("\(summary) did not complete within \(limit) s (waiting on the handle)")
            }
        }
        let failure = self.failure
        condition.unlock()
        if let failure { throw failure }
    }
}

/// A backend that advances its operations on the thread that waits for one of them, rather than making the
/// waiter sleep until another thread wakes it.
protocol WorkDriver: AnyObject, Sendable {
    /// Advances the backend on the calling thread until `work` has finished or `deadline` passes.
    func drive(until work: Work, deadline: ContinuousClock.Instant)
}

/// A message a probe found waiting: who sent it and how many elements it holds. The message itself stays
/// queued until a receive from `source` with the same tag takes it.
public struct ProbedMessage: Sendable, Equatable {
    public let source: Int
    public let count: Int

    public init(source: Int, count: Int) {
        self.source = source
        self.count = count
    }
}

/// The default limit on every blocking communication wait. Generous by default (a slow peer is not a dead
/// one); `CONVOY_COMM_TIMEOUT` (seconds) or ``set(_:)`` changes it; tests use short ones.
public enum CommunicationTimeout {
    private static let value = Mutex<Double>({
        if let text = ProcessInfo.processInfo.environment["CONVOY_COMM_TIMEOUT"], let seconds = Double(text), seconds > 0 { return seconds }
        return 300
    }())

    /// The current limit in seconds.
    public static var seconds: Double { value.withLock { $0 } }

    /// Sets the limit for waits that start afterwards.
    public static func set(_ seconds: Double) {
        precondition(seconds > 0, "a communication timeout must be positive")
        value.withLock { $0 = seconds }
    }
}

/// Failures of communication: each message names the group, the operation, its sequence number and, where
/// known, the ranks that did not take part.
public enum CommunicationError: Error, CustomStringConvertible, Equatable, Sendable {
    case timedOut(String)
    case mismatch(String)
    case peerFailed(String)
    case invalidArgument(String)
    case backend(String)

    public var description: String {
        switch self {
        case .timedOut(let message): return "communication timed out: \(message)"
        case .mismatch(let message): return "collective mismatch: \(message)"
        case .peerFailed(let message): return "peer failed: \(message)"
        case .invalidArgument(let message): return "invalid communication call: \(message)"
        case .backend(let message): return "communication backend error: \(message)"
        }
    }
}
