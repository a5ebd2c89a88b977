import ConvoyTensor
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Writes to standard output that fail with an error instead of a trap or a signal.
///
/// `FileHandle.write(_:)` traps when the write fails, and a closed pipe (`convoy train | head -1`) would
/// otherwise kill the process with SIGPIPE; `convoy` ignores SIGPIPE at start-up, so a closed pipe comes back
/// here as EPIPE and becomes a one-line error.
public enum StandardOutput {
    /// Writes all of `bytes` to standard output, unbuffered.
    ///
    /// - Throws: ``ConvoyError/io(_:)`` saying why standard output cannot be written.
    public static func write(_ bytes: [UInt8]) throws {
        var written = 0
        while written < bytes.count {
            let result = bytes.withUnsafeBytes { Glibc.write(STDOUT_FILENO, $0.baseAddress! + written, $0.count - written) }
            if result < 0 {
                if errno == EINTR { continue }
                throw failure(errno)
            }
            written += result
        }
    }

    /// Writes `text` to standard output (see ``write(_:)-(_:)``).
    public static func write(_ text: String) throws { try write(Array(text.utf8)) }

    static func failure(_ code: Int32) -> ConvoyError {
        let reason = String(cString: strerror(code))
        if code == EPIPE {
            return .io("standard output was closed (\(reason)): whatever read it, such as `head`, has exited; stopping")
        }
        return .io("cannot write to standard output: \(reason)")
    }
}
