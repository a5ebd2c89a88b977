/// The ids of pieces already encoded in one `encode` call: text repeats its words, and a lookup is much
/// cheaper than merging again. Keys are the piece's bytes, kept in one arena; an open-addressed table of
/// entry indices finds them.
///
/// Each call has its own cache (no lock, so parallel chunks do not contend), so a cache pays off on long
/// inputs such as corpora; it stops growing at ``maximumEntries`` and skips pieces longer than
/// ``maximumPieceLength``.
struct BPEPieceCache {
    static let maximumPieceLength = 64
    static let maximumEntries = 1 << 20

    private static let tagMask: UInt64 = 0xFFFF_FFFF_0000_0000

    private struct Entry {
        var hash: UInt64
        var keyStart: Int32
        var keyLength: Int32
        var idsStart: Int32
        var idsCount: Int32
    }

    /// `hash's high 32 bits << 32 | entry index + 1`, or 0 for an empty slot.
    private var slots: [UInt64]
    private var mask: Int
    private var entries: [Entry] = []
    private var keyBytes: [UInt8] = []
    private var ids: [Int32] = []

    init() {
        slots = [UInt64](repeating: 0, count: 1024)
        mask = 1023
    }

    @inline(__always)
    static func hash(_ bytes: UnsafeBufferPointer<UInt8>, _ range: Range<Int>) -> UInt64 {
        var hash: UInt64 = 0xCBF2_9CE4_8422_2325
        for index in range { hash = (hash ^ UInt64(bytes[index])) &* 0x0000_0100_0000_01B3 }
        // FNV's low bits mix poorly; the table uses them as the slot.
        hash ^= hash >> 29
        return hash &* 0xBF58_476D_1CE5_E4B9
    }

    /// Appends the cached ids of `bytes[range]` to `output` and returns true, or returns false if absent.
    @inline(__always)
    func appendIDs(of bytes: UnsafeBufferPointer<UInt8>, _ range: Range<Int>, hash: UInt64, to output: inout [Int32]) -> Bool {
        let tag = hash & Self.tagMask
        var slot = Int(truncatingIfNeeded: hash) & mask
        while true {
            let stored = slots[slot]
            if stored == 0 { return false }
            // The slot holds the hash's high half beside the entry index, so most mismatches never read the entry.
            if stored & Self.tagMask == tag {
                let entry = entries[Int(truncatingIfNeeded: stored & 0xFFFF_FFFF) - 1]
                if Int(entry.keyLength) == range.count && equalKey(entry, bytes, range) {
                    ids.withUnsafeBufferPointer { ids in
                        output.append(contentsOf: UnsafeBufferPointer(rebasing: ids[Int(entry.idsStart)..<Int(entry.idsStart + entry.idsCount)]))
                    }
                    return true
                }
            }
            slot = (slot + 1) & mask
        }
    }

    /// Remembers that `bytes[range]` encodes to `pieceIDs`.
    mutating func insert(_ bytes: UnsafeBufferPointer<UInt8>, _ range: Range<Int>, hash: UInt64, ids pieceIDs: ArraySlice<Int32>) {
        guard entries.count < Self.maximumEntries else { return }
        if (entries.count + 1) * 2 > slots.count { grow() }
        let entry = Entry(hash: hash, keyStart: Int32(keyBytes.count), keyLength: Int32(range.count), idsStart: Int32(ids.count), idsCount: Int32(pieceIDs.count))
        keyBytes.append(contentsOf: UnsafeBufferPointer(rebasing: bytes[range]))
        ids.append(contentsOf: pieceIDs)
        place(entries.count, hash: hash)
        entries.append(entry)
    }

    private func equalKey(_ entry: Entry, _ bytes: UnsafeBufferPointer<UInt8>, _ range: Range<Int>) -> Bool {
        keyBytes.withUnsafeBufferPointer { stored in
            var storedIndex = Int(entry.keyStart)
            for index in range {
                if stored[storedIndex] != bytes[index] { return false }
                storedIndex += 1
            }
            return true
        }
    }

    private mutating func place(_ index: Int, hash: UInt64) {
        var slot = Int(truncatingIfNeeded: hash) & mask
        while slots[slot] != 0 { slot = (slot + 1) & mask }
        slots[slot] = hash & Self.tagMask | UInt64(index + 1)
    }

    private mutating func grow() {
        slots = [UInt64](repeating: 0, count: slots.count * 2)
        mask = slots.count - 1
        for (index, entry) in entries.enumerated() { place(index, hash: entry.hash) }
    }
}
