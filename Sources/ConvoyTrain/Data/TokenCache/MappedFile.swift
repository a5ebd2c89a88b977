import ConvoyTensor
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A whole file mapped read-only into memory, so a corpus or token file larger than RAM is read page by page
/// as it is touched, and several ranks of one machine share the page cache instead of each holding a copy.
///
/// The mapping lives as long as the object; its bytes are reached only inside ``withUnsafeBytes(_:)``.
/// Nothing mutates after `init`, which is why the type can be shared between rank threads.
public final class MappedFile: @unchecked Sendable {
    /// The file's path, for messages.
    public let path: String
    /// The file's length in bytes when it was mapped.
    public let count: Int
    private let base: UnsafeRawPointer?

    /// Maps the regular file at `path`.
    ///
    /// Throws ``ConvoyTensor/ConvoyError/io(_:)`` when it does not exist, is not a regular file, or cannot be
    /// opened or mapped.
    public init(path: String) throws {
        self.path = path
        let descriptor = open(path, O_RDONLY | O_CLOEXEC)
        guard descriptor >= 0 else {
            throw ConvoyError.io("cannot open \(path): \(String(cString: strerror(errno)))")
        }
        defer { close(descriptor) }
        var status = stat()
        guard fstat(descriptor, &status) == 0 else {
            throw ConvoyError.io("cannot read the size of \(path): \(String(cString: strerror(errno)))")
        }
        guard status.st_mode & S_IFMT == S_IFREG else {
            throw ConvoyError.io("\(path) is not a regular file (it is a \(TextDataset.fileKind(status.st_mode))); give the path of one file")
        }
        count = Int(status.st_size)
        guard count > 0 else {
            base = nil
            return
        }
        let mapped = mmap(nil, count, PROT_READ, MAP_SHARED, descriptor, 0)
        guard let mapped, mapped != MAP_FAILED else {
            throw ConvoyError.io("cannot map \(path) (\(count) bytes) into memory: \(String(cString: strerror(errno)))")
        }
        // Windows are drawn at random offsets; read-ahead of a sequential scan would only waste I/O.
        _ = madvise(mapped, count, MADV_RANDOM)
        base = UnsafeRawPointer(mapped)
    }

    deinit {
        if let base { munmap(UnsafeMutableRawPointer(mutating: base), count) }
    }

    /// Runs `body` on the mapped bytes (empty for an empty file). The pointer must not escape `body`.
    public func withUnsafeBytes<Result>(_ body: (UnsafeRawBufferPointer) throws -> Result) rethrows -> Result {
        try body(UnsafeRawBufferPointer(start: base, count: count))
    }

    /// Tells the kernel the bytes will be read once from start to end (tokenising, hashing).
    public func adviseSequential() {
        if let base { _ = madvise(UnsafeMutableRawPointer(mutating: base), count, MADV_SEQUENTIAL) }
    }
}
