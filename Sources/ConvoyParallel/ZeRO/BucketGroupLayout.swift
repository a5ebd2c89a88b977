/// How one bucket group of a ``ParamAndGradBuffer`` travels in a single collective.
///
/// Rank r owns the same-offset shard of every bucket, so the shards of a group's buckets are not one
/// contiguous chunk of the group's range and a plain reduce-scatter over that range would hand rank r the
/// wrong elements. The group is therefore sent in rank-major order — for rank 0 its shard of each bucket in
/// turn, then for rank 1, and so on. A reduce-scatter of the rank-major buffer leaves on rank r exactly its
/// shards, bucket after bucket (the order of ZeRO's gradient shard), and an all-gather of the rank's shards
/// concatenated yields the rank-major buffer, which ``unpackRankMajor(_:into:)`` puts back into the buckets.
/// A group of one bucket needs no reordering: rank-major order is the bucket's own order.
public struct BucketGroupLayout: Sendable, Equatable {
    /// Indices of the group's buckets, consecutive.
    public let buckets: [Int]
    /// Each bucket's element count (padded: a multiple of ``ranks``).
    public let bucketCounts: [Int]
    /// Data-parallel size.
    public let ranks: Int

    public init(buckets: [Int], bucketCounts: [Int], ranks: Int) {
        precondition(buckets.count == bucketCounts.count && !buckets.isEmpty, "a bucket group needs at least one bucket and one count per bucket")
        precondition(ranks >= 1 && bucketCounts.allSatisfy { $0 % ranks == 0 }, "bucket counts \(bucketCounts) must be multiples of the data-parallel size \(ranks)")
        self.buckets = buckets
        self.bucketCounts = bucketCounts
        self.ranks = ranks
    }

    /// Elements of the whole group.
    public var totalCount: Int { bucketCounts.reduce(0, +) }

    /// Elements of one rank's shards of the group (what a reduce-scatter leaves on it).
    public var shardCount: Int { totalCount / ranks }

    /// True when rank-major order is the buffer's own order (a single bucket): no copy is needed.
    public var isSingleBucket: Bool { buckets.count == 1 }

    /// Copies the buckets (`sources[i]`: bucket i's `bucketCounts[i]` elements, in buffer order) into
    /// `destination` (``totalCount`` elements) in rank-major order.
    public func packRankMajor(_ sources: [UnsafePointer<Float>], into destination: UnsafeMutablePointer<Float>) {
        for rank in 0..<ranks { packShards(of: rank, from: sources, into: destination + rank * shardCount) }
    }

    /// The inverse of ``packRankMajor(_:into:)``: `source` in rank-major order back into each bucket.
    public func unpackRankMajor(_ source: UnsafePointer<Float>, into destinations: [UnsafeMutablePointer<Float>]) {
        for rank in 0..<ranks { unpackShards(of: rank, from: source + rank * shardCount, into: destinations) }
    }

    /// Rank `rank`'s part of ``packRankMajor(_:into:)``: its shard of each bucket (`sources[i]`: bucket i's
    /// elements in buffer order), concatenated into `destination` (``shardCount`` elements) — what the rank
    /// sends to an all-gather of the group.
    public func packShards(of rank: Int, from sources: [UnsafePointer<Float>], into destination: UnsafeMutablePointer<Float>) {
        precondition(sources.count == buckets.count, "one source per bucket")
        var position = 0
        for (source, count) in zip(sources, bucketCounts) {
            let shard = count / ranks
            (destination + position).update(from: source + rank * shard, count: shard)
            position += shard
        }
    }

    /// Rank `rank`'s part of ``unpackRankMajor(_:into:)``: its shards, concatenated in `source` (what a
    /// reduce-scatter of the group leaves on it), back into each bucket's shard region.
    public func unpackShards(of rank: Int, from source: UnsafePointer<Float>, into destinations: [UnsafeMutablePointer<Float>]) {
        precondition(destinations.count == buckets.count, "one destination per bucket")
        var position = 0
        for (destination, count) in zip(destinations, bucketCounts) {
            let shard = count / ranks
            (destination + rank * shard).update(from: source + position, count: shard)
            position += shard
        }
    }
}
