#if canImport(Glibc)
import Glibc
#endif

/// A value per thread. Ranks of the Local backend are threads of one process, so per-rank state (grad mode,
/// the compute pool a rank uses) must live per thread rather than in globals.
public final class ThreadLocal<Value>: @unchecked Sendable {
    private final class Box {
        var value: Value
        init(_ value: Value) { self.value = value }
    }

    private var key = pthread_key_t()
    private let makeInitial: @Sendable () -> Value

    /// Creates a thread-local slot whose value starts as `initial()` on every thread.
    public init(_ initial: @escaping @Sendable () -> Value) {
        makeInitial = initial
        let status = pthread_key_create(&key) { raw in
            guard let raw else { return }
            Unmanaged<AnyObject>.fromOpaque(raw).release()
        }
        precondition(status == 0, "pthread_key_create failed with \(status)")
    }

    private var box: Box {
        if let raw = pthread_getspecific(key) {
            return Unmanaged<AnyObject>.fromOpaque(raw).takeUnretainedValue() as! Box
        }
        let box = Box(makeInitial())
        pthread_setspecific(key, Unmanaged<AnyObject>.passRetained(box).toOpaque())
        return box
    }

    /// This thread's value.
    public var value: Value {
        get { box.value }
        set { box.value = newValue }
    }

    /// Runs `body` with this thread's value set to `value`, restoring the previous value afterwards.
    public func withValue<Result>(_ value: Value, _ body: () throws -> Result) rethrows -> Result {
        let slot = box
        let saved = slot.value
        slot.value = value
        defer { slot.value = saved }
        return try body()
    }
}
