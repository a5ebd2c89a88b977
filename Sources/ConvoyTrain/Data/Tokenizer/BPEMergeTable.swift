/// A BPE model's merges: for a pair of adjacent token ids, the merge's rank (its line in the merges list;
/// lower merges first) and the id of the merged token. An open-addressed hash table over 64-bit pair keys,
/// because the merge loop looks pairs up millions of times per second.
struct BPEMergeTable: Sendable {
    /// The value of a pair that does not merge; every real value is smaller.
    static let none = UInt64.max

    private var keys: [UInt64]
    private var values: [UInt64]
    private let mask: Int

    /// A table of `merges` in rank order. A pair listed twice keeps its last rank, as `tokenizers` does.
    init(merges: [(left: Int32, right: Int32, merged: Int32)]) {
        var capacity = 16
        while capacity < merges.count * 2 { capacity *= 2 }
        keys = [UInt64](repeating: Self.none, count: capacity)
        values = [UInt64](repeating: Self.none, count: capacity)
        mask = capacity - 1
        for (rank, merge) in merges.enumerated() {
            let key = Self.key(merge.left, merge.right)
            var slot = Self.slot(key, mask)
            while keys[slot] != Self.none && keys[slot] != key { slot = (slot + 1) & mask }
            keys[slot] = key
            values[slot] = UInt64(rank) << 32 | UInt64(UInt32(bitPattern: merge.merged))
        }
    }

    /// `rank << 32 | mergedID` for the pair, or ``none``. Comparing values compares ranks (the merged id only
    /// breaks ties between equal pairs, which have equal values).
    @inline(__always)
    func value(_ left: Int32, _ right: Int32) -> UInt64 {
        let key = Self.key(left, right)
        var slot = Self.slot(key, mask)
        return keys.withUnsafeBufferPointer { keys in
            while true {
                let stored = keys[slot]
                if stored == key { return values.withUnsafeBufferPointer { $0[slot] } }
                if stored == Self.none { return Self.none }
                slot = (slot + 1) & mask
            }
        }
    }

    @inline(__always)
    static func mergedID(_ value: UInt64) -> Int32 { Int32(bitPattern: UInt32(truncatingIfNeeded: value)) }

    @inline(__always)
    private static func key(_ left: Int32, _ right: Int32) -> UInt64 {
        UInt64(UInt32(bitPattern: left)) << 32 | UInt64(UInt32(bitPattern: right))
    }

    @inline(__always)
    private static func slot(_ key: UInt64, _ mask: Int) -> Int {
        Int(truncatingIfNeeded: (key &* 0x9E37_79B9_7F4A_7C15) >> 32) & mask
    }
}
