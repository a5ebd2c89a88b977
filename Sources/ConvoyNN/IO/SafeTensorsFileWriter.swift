import ConvoyTensor
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Writes a safetensors file one tensor at a time, so a writer never needs all of its tensors in memory at
/// once: the header is made from the names, dtypes and shapes given up front, then each tensor's bytes are
/// written straight from its storage as `tensor(i)` supplies it, and the file is fsynced.
///
/// The file is written in place (not atomically): callers write into a directory they publish by renaming
/// it (a sharded checkpoint), or to a name they rename afterwards.
public enum SafeTensorsFileWriter {
    /// One tensor of the file.
    public struct Entry: Sendable {
        public var name: String
        public var dtype: DType
        public var shape: [Int]

        public init(name: String, dtype: DType, shape: [Int]) {
            self.name = name
            self.dtype = dtype
            self.shape = shape
        }
    }

    /// Writes `entries` in order to `path` (created or truncated), each entry's data supplied by `tensor(i)`
    /// (a tensor of the entry's dtype and shape; a non-contiguous one is copied first), and fsyncs it. `written`
    /// sees each entry's bytes as they went to the file (e.g. to checksum them). Returns each entry's byte range
    /// in the file.
    ///
    /// - Throws: ``ConvoyError/io(_:)`` naming the file when it cannot be written;
    ///   ``ConvoyError/invalidConfiguration(_:)`` when a supplied tensor does not match its entry.
    @discardableResult
    public static func write(_ entries: [Entry], metadata: [String: String] = [:], to path: String, tensor: (Int) throws -> Tensor,
                             written: (Int, UnsafeRawBufferPointer) -> Void = { _, _ in }) throws -> [Range<Int>] {
        precondition(1.littleEndian == 1, "safetensors data is little-endian; this writer copies storage bytes as they are")
        let header = SafeTensors.header(for: entries.map { (name: $0.name, storage: $0.dtype == .bfloat16 ? .bf16 : .f32, shape: $0.shape) }, metadata: metadata)
        let descriptor = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard descriptor >= 0 else { throw ConvoyError.io("cannot create \(path): \(String(cString: strerror(errno)))") }
        defer { close(descriptor) }
        func writeAll(_ bytes: UnsafeRawBufferPointer) throws {
            var done = 0
            while done < bytes.count {
                let result = Glibc.write(descriptor, bytes.baseAddress! + done, bytes.count - done)
                if result < 0 {
                    if errno == EINTR { continue }
                    throw ConvoyError.io("writing \(path) failed: \(String(cString: strerror(errno)))")
                }
                done += result
            }
        }
        try header.bytes.withUnsafeBytes { try writeAll($0) }
        for (index, entry) in entries.enumerated() {
            var values = try tensor(index)
            guard values.dtype == entry.dtype, values.shape.reduce(1, *) == entry.shape.reduce(1, *) else {
                throw ConvoyError.invalidConfiguration("tensor '\(entry.name)' for \(path) is \(values.dtype) \(values.shape), its entry says \(entry.dtype) \(entry.shape)")
            }
            if !values.isContiguous { values = values.contiguous().converted(to: entry.dtype) }
            let bytes = UnsafeRawBufferPointer(start: values.storage.pointer + values.offset * values.dtype.byteSize, count: values.count * values.dtype.byteSize)
            try withExtendedLifetime(values) {
                try writeAll(bytes)
                written(index, bytes)
            }
        }
        guard fsync(descriptor) == 0 else { throw ConvoyError.io("fsync of \(path) failed: \(String(cString: strerror(errno)))") }
        let start = header.bytes.count
        return header.dataRanges.map { (start + $0.lowerBound)..<(start + $0.upperBound) }
    }
}
