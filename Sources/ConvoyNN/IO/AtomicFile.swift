import ConvoyTensor
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Crash-safe file replacement, used for every file Convoy saves (weights, configs, checkpoints).
public enum AtomicFile {
    /// Writes `bytes` to `path` so that a crash at any moment leaves either the old file or the new one:
    /// a temporary file in the same directory, fsync, rename over `path`, fsync of the directory. On failure
    /// the old file is untouched and the temporary file removed. The temporary's name carries this process's
    /// ``TemporaryOwner`` tag, so what a killed writer leaves is recognised and removed by a later run.
    ///
    /// - Throws: ``ConvoyError/io(_:)`` naming the step that failed.
    public static func write(_ bytes: Data, to path: String) throws {
        func failure(_ step: String, _ file: String, _ code: Int32 = errno) -> ConvoyError {
            .io("\(step) \(file) failed: \(String(cString: strerror(code)))")
        }
        let directory = URL(fileURLWithPath: path).deletingLastPathComponent().path
        let fileName = URL(fileURLWithPath: path).lastPathComponent
        let temporaryPath = URL(fileURLWithPath: directory)
            .appendingPathComponent(".\(fileName).tmp-\(TemporaryOwner.tag(unique: String(UInt64.random(in: 0...UInt64.max))))").path

        let descriptor = open(temporaryPath, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o644)
        guard descriptor >= 0 else { throw failure("creating temporary file", temporaryPath) }
        var renamed = false
        defer { if !renamed { unlink(temporaryPath) } }
        do {
            defer { close(descriptor) }
            try bytes.withUnsafeBytes { (raw: UnsafeRawBufferPointer) in
                var written = 0
                while written < raw.count {
                    let result = Glibc.write(descriptor, raw.baseAddress! + written, raw.count - written)
                    if result < 0 {
                        if errno == EINTR { continue }
                        throw failure("writing", temporaryPath)
                    }
                    written += result
                }
            }
            guard fsync(descriptor) == 0 else { throw failure("fsync of", temporaryPath) }
        }
        guard rename(temporaryPath, path) == 0 else { throw failure("renaming \(temporaryPath) to", path) }
        renamed = true

        // Make the rename itself durable.
        try syncDirectory(directory)
    }

    /// Flushes a directory's entries (new names, renames) to disk. Some file systems cannot fsync a directory
    /// (EINVAL): the files' data is already safe then, so that case is not an error.
    public static func syncDirectory(_ directory: String) throws {
        let descriptor = open(directory, O_RDONLY | O_CLOEXEC)
        guard descriptor >= 0 else { throw ConvoyError.io("opening directory \(directory) failed: \(String(cString: strerror(errno)))") }
        defer { close(descriptor) }
        if fsync(descriptor) != 0 && errno != EINVAL {
            throw ConvoyError.io("fsync of directory \(directory) failed: \(String(cString: strerror(errno)))")
        }
    }
}
