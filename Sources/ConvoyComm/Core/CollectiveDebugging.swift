import ConvoyTensor
import Foundation
import Synchronization

/// The collective debug mode: checks that every rank of a group issues the same collective (kind, dtype,
/// count, reduction, root) with the same sequence number, in the same order, and reports the first mismatch
/// with both sides instead of letting it hang or corrupt data.
///
/// - The **Local** backend checks always, whatever the switch says: its ranks already meet in shared memory
///   for every collective, so comparing the descriptors costs nothing, and a mismatch there would otherwise
///   read or write memory out of bounds.
/// - The **MPI** backend checks only when the switch is on: each collective then first all-gathers a compact
///   encoding of its descriptor and sequence number among the group's ranks (one small extra message round,
///   under the same timeout), compares, and only then starts the real operation, so a mismatched count never
///   reaches MPI. On a mismatch every rank fails the operation with ``CommunicationError/mismatch(_:)`` and
///   the group refuses further work. With the switch off nothing changes and nothing is paid.
///
/// The switch starts from the environment variable `CONVOY_DEBUG_COLLECTIVES` ("1" or "true" turn it on) and
/// ``set(_:)`` changes it for operations issued afterwards (each operation reads it once, when issued). All
/// ranks of a group must agree on it — under MPI the check is itself a collective — so set the variable for
/// the whole job (`mpirun -x CONVOY_DEBUG_COLLECTIVES=1 …`) or call ``set(_:)`` at the same point on every rank.
public enum CollectiveDebugging {
    private static let enabled = Mutex<Bool>(parse(ProcessInfo.processInfo.environment["CONVOY_DEBUG_COLLECTIVES"]))

    /// Whether the debug mode is on.
    public static var isEnabled: Bool { enabled.withLock { $0 } }

    /// Turns the debug mode on or off for operations issued afterwards.
    public static func set(_ enabled: Bool) {
        self.enabled.withLock { $0 = enabled }
    }

    /// "1" and "true" (any case, surrounding spaces ignored) mean on; anything else, or no value, off.
    static func parse(_ value: String?) -> Bool {
        guard let value = value?.trimmingCharacters(in: .whitespaces).lowercased() else { return false }
        return value == "1" || value == "true"
    }

    // MARK: The exchanged encoding (shared by backends that exchange descriptors as messages)

    /// Number of Int64 fields in an encoded descriptor: kind, dtype, count, reduction, root, sequence.
    static let encodedFields = 6

    private static let kinds: [CollectiveDescriptor.Kind] = [.allReduce, .reduceScatter, .allGather, .broadcast, .barrier, .split]

    /// A fixed-size encoding of `descriptor` at `sequence` (−1 stands for an absent dtype, reduction or root).
    static func encode(_ descriptor: CollectiveDescriptor, sequence: Int) -> [Int64] {
        [
            Int64(kinds.firstIndex(of: descriptor.kind)!),
            descriptor.dtype.map { Int64(DType.allCases.firstIndex(of: $0)!) } ?? -1,
            Int64(descriptor.count),
            descriptor.operation.map { Int64(ReduceOperation.allCases.firstIndex(of: $0)!) } ?? -1,
            descriptor.root.map(Int64.init) ?? -1,
            Int64(sequence),
        ]
    }

    /// Words how a rank's encoded entry reads: "all-reduce float32 count 10 sum", with "(#S)" appended when
    /// `showSequence`; an entry that does not decode is shown raw.
    static func describe(_ fields: ArraySlice<Int64>, showSequence: Bool) -> String {
        let values = Array(fields)
        guard values.count == encodedFields else { return "an unreadable descriptor \(values)" }
        func pick<T>(_ all: [T], _ code: Int64) -> T?? {
            code == -1 ? .some(nil) : (code >= 0 && code < all.count ? .some(all[Int(code)]) : nil)
        }
        guard values[0] >= 0 && values[0] < kinds.count,
              let dtype = pick(DType.allCases, values[1]),
              let operation = pick(ReduceOperation.allCases, values[3]),
              values[2] >= 0, values[4] >= -1
        else { return "an unreadable descriptor \(values)" }
        let descriptor = CollectiveDescriptor(kind: kinds[Int(values[0])], dtype: dtype, count: Int(values[2]),
                                              operation: operation, root: values[4] == -1 ? nil : Int(values[4]))
        return showSequence ? "\(descriptor) (#\(values[5]))" : descriptor.description
    }

    /// Compares the gathered encodings (rank r's entry at `table[r·encodedFields ..< (r+1)·encodedFields]`)
    /// and returns the mismatch message, or nil when every rank issued the same operation. Every rank holds the
    /// same table, so every rank words the same message:
    /// "operation #S on group 'G': rank 0 issued X, rank 1 issued Y; every rank must issue …".
    static func mismatch(in table: [Int64], size: Int, sequence: Int, group: String) -> String? {
        let width = encodedFields
        func entry(_ rank: Int) -> ArraySlice<Int64> { table[(rank * width)..<((rank + 1) * width)] }
        let differing = (1..<max(size, 1)).filter { entry($0) != entry(0) }
        guard let other = differing.first else { return nil }
        let showSequence = entry(other).last != entry(0).last
        var message = "operation #\(sequence) on group '\(group)': rank 0 issued \(describe(entry(0), showSequence: showSequence)), "
            + "rank \(other) issued \(describe(entry(other), showSequence: showSequence))"
        if differing.count > 1 {
            message += " (ranks \(differing.map(String.init).joined(separator: ", ")) differ from rank 0)"
        }
        return message + "; every rank must issue the same collectives in the same order"
    }
}
