/// Assigns parameters to gradient buckets (PyTorch DDP's rule): walk the parameters in reverse registration
/// order — the order backward produces their gradients — and close a bucket when the next parameter would
/// push it past its cap. The first bucket has its own, smaller cap so the first all-reduce starts early;
/// a parameter larger than a cap gets a bucket of its own.
public enum BucketAssignment {
    /// Buckets as lists of parameter indices (indices into `byteSizes`, which is in registration order).
    public static func assign(byteSizes: [Int], firstBucketCapBytes: Int, bucketCapBytes: Int) -> [[Int]] {
        var buckets: [[Int]] = []
        var current: [Int] = []
        var currentBytes = 0
        for index in byteSizes.indices.reversed() {
            let cap = buckets.isEmpty ? firstBucketCapBytes : bucketCapBytes
            if !current.isEmpty && currentBytes + byteSizes[index] > cap {
                buckets.append(current)
                current = []
                currentBytes = 0
            }
            current.append(index)
            currentBytes += byteSizes[index]
        }
        if !current.isEmpty { buckets.append(current) }
        return buckets
    }
}
