import Foundation

/// A group's communication thread: runs submitted operations one at a time, in submission order, so a
/// group's operations complete in the order issued while the caller's thread goes on computing.
///
/// The thread holds only the queue's internal state, never the group, so a group that is no longer used is
/// freed and its thread ends.
public final class CommunicationQueue: @unchecked Sendable {
    private final class State: @unchecked Sendable {
        let condition = NSCondition()
        var jobs: [() -> Void] = []
        var stopping = false

        func loop() {
            while true {
                condition.lock()
                while jobs.isEmpty && !stopping { condition.wait() }
                if jobs.isEmpty && stopping { condition.unlock(); return }
                let job = jobs.removeFirst()
                condition.unlock()
                job()
            }
        }
    }

    private let state = State()

    /// Starts the thread; `name` shows in debuggers ("convoy-comm dp rank 1").
    public init(name: String) {
        let state = self.state
        let thread = Thread { state.loop() }
        thread.name = name
        thread.stackSize = 1 << 20
        thread.start()
    }

    deinit {
        // Work already queued still runs; then the thread exits.
        state.condition.lock()
        state.stopping = true
        state.condition.broadcast()
        state.condition.unlock()
    }

    /// Queues `job` to run after everything submitted before it.
    public func submit(_ job: @escaping () -> Void) {
        state.condition.lock()
        state.jobs.append(job)
        state.condition.signal()
        state.condition.unlock()
    }

    /// Queues an operation and returns its ``Work``; the operation's thrown error becomes the work's error.
    public func enqueue(_ summary: String, _ operation: @escaping () throws -> Void) -> Work {
        let work = Work(summary: summary)
        submit {
            do {
                try operation()
                work.finish()
            } catch {
                work.finish(error: error)
            }
        }
        return work
    }
}
