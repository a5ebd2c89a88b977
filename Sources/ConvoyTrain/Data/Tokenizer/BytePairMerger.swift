/// Runs BPE's merges on one piece, as `tokenizers`' `Word::merge_all` does: repeatedly merge the adjacent
/// pair with the lowest rank, the leftmost of equal ones, until no adjacent pair has a merge.
///
/// Short pieces (almost all) use a flat array scanned for the minimum; long ones (whitespace runs, long
/// unbroken strings) a heap over a linked list, so a megabyte of spaces does not take quadratic time. Both
/// pick the same pair at every step, so they give the same ids. The scratch buffers are reused across pieces.
struct BytePairMerger {
    /// Pieces with more bytes than this go through the heap.
    static let linearLimit = 48

    private var symbols: [Int32] = []
    private var pairValues: [UInt64] = []
    private var previous: [Int32] = []
    private var next: [Int32] = []
    private var heap: [UInt64] = []

    /// Appends the ids of `bytes[range]` to `output`, starting from one symbol per byte (`byteIDs`).
    mutating func merge(_ bytes: UnsafeBufferPointer<UInt8>, _ range: Range<Int>, byteIDs: UnsafeBufferPointer<Int32>, merges: BPEMergeTable, useHeap: Bool? = nil, into output: inout [Int32]) {
        if useHeap ?? (range.count > Self.linearLimit) {
            mergeWithHeap(bytes, range, byteIDs: byteIDs, merges: merges, into: &output)
        } else {
            mergeLinearly(bytes, range, byteIDs: byteIDs, merges: merges, into: &output)
        }
    }

    private mutating func mergeLinearly(_ bytes: UnsafeBufferPointer<UInt8>, _ range: Range<Int>, byteIDs: UnsafeBufferPointer<Int32>, merges: BPEMergeTable, into output: inout [Int32]) {
        symbols.removeAll(keepingCapacity: true)
        for index in range { symbols.append(byteIDs[Int(bytes[index])]) }
        var count = symbols.count
        pairValues.removeAll(keepingCapacity: true)
        for index in 0..<max(count - 1, 0) { pairValues.append(merges.value(symbols[index], symbols[index + 1])) }
        symbols.withUnsafeMutableBufferPointer { symbols in
            pairValues.withUnsafeMutableBufferPointer { pairs in
                while count > 1 {
                    var best = BPEMergeTable.none
                    var bestIndex = -1
                    for index in 0..<(count - 1) where pairs[index] < best {
                        best = pairs[index]
                        bestIndex = index
                    }
                    if bestIndex < 0 { break }
                    symbols[bestIndex] = BPEMergeTable.mergedID(best)
                    // Drop the right symbol of the merged pair and the pair that began with it.
                    var index = bestIndex + 1
                    while index < count - 1 {
                        symbols[index] = symbols[index + 1]
                        if index < count - 2 { pairs[index] = pairs[index + 1] }
                        index += 1
                    }
                    count -= 1
                    if bestIndex > 0 { pairs[bestIndex - 1] = merges.value(symbols[bestIndex - 1], symbols[bestIndex]) }
                    if bestIndex < count - 1 { pairs[bestIndex] = merges.value(symbols[bestIndex], symbols[bestIndex + 1]) }
                }
            }
        }
        output.append(contentsOf: symbols[0..<count])
    }

    /// `tokenizers`' algorithm: a min-heap of (rank, position) over a doubly linked list of symbols; an entry
    /// whose pair has since changed is skipped when it comes out.
    private mutating func mergeWithHeap(_ bytes: UnsafeBufferPointer<UInt8>, _ range: Range<Int>, byteIDs: UnsafeBufferPointer<Int32>, merges: BPEMergeTable, into output: inout [Int32]) {
        let count = range.count
        symbols.removeAll(keepingCapacity: true)
        previous.removeAll(keepingCapacity: true)
        next.removeAll(keepingCapacity: true)
        heap.removeAll(keepingCapacity: true)
        for (position, index) in range.enumerated() {
            symbols.append(byteIDs[Int(bytes[index])])
            previous.append(Int32(position - 1))
            next.append(position + 1 < count ? Int32(position + 1) : -1)
        }
        // Heap entries are `rank << 32 | position`: ordered by rank, then leftmost.
        for position in 0..<max(count - 1, 0) {
            let value = merges.value(symbols[position], symbols[position + 1])
            if value != BPEMergeTable.none { heapPush(value & 0xFFFF_FFFF_0000_0000 | UInt64(position)) }
        }
        while let top = heapPop() {
            let position = Int(top & 0xFFFF_FFFF), rank = top >> 32
            // A removed symbol has next == -2.
            let right = Int(next[position])
            if right < 0 { continue }
            let value = merges.value(symbols[position], symbols[right])
            if value == BPEMergeTable.none || value >> 32 != rank { continue }
            symbols[position] = BPEMergeTable.mergedID(value)
            let afterRight = next[right]
            next[position] = afterRight
            next[right] = -2
            if afterRight >= 0 { previous[Int(afterRight)] = Int32(position) }
            let before = Int(previous[position])
            if before >= 0 {
                let leftValue = merges.value(symbols[before], symbols[position])
                if leftValue != BPEMergeTable.none { heapPush(leftValue & 0xFFFF_FFFF_0000_0000 | UInt64(before)) }
            }
            if afterRight >= 0 {
                let rightValue = merges.value(symbols[position], symbols[Int(afterRight)])
                if rightValue != BPEMergeTable.none { heapPush(rightValue & 0xFFFF_FFFF_0000_0000 | UInt64(position)) }
            }
        }
        var position = count > 0 ? 0 : -1
        while position >= 0 {
            output.append(symbols[position])
            position = Int(next[position])
        }
    }

    private mutating func heapPush(_ value: UInt64) {
        heap.append(value)
        var child = heap.count - 1
        while child > 0 {
            let parent = (child - 1) / 2
            if heap[parent] <= value { break }
            heap[child] = heap[parent]
            child = parent
        }
        heap[child] = value
    }

    private mutating func heapPop() -> UInt64? {
        guard let last = heap.popLast() else { return nil }
        guard !heap.isEmpty else { return last }
        let top = heap[0]
        var parent = 0
        let count = heap.count
        while true {
            var child = 2 * parent + 1
            if child >= count { break }
            if child + 1 < count && heap[child + 1] < heap[child] { child += 1 }
            if last <= heap[child] { break }
            heap[parent] = heap[child]
            parent = child
        }
        heap[parent] = last
        return top
    }
}
